//! `init`, `join` and `migrate`: data dir commands, run with no controller
//! serving it.

use anyhow::Result;

use darkport_controller::datadir::{self, JoinOptions};
use darkport_controller::{DataDir, InitOptions};

use super::name;
use crate::cli::{InitArgs, JoinArgs, MigrateArgs};

pub fn init(args: InitArgs) -> Result<()> {
    let InitArgs {
        dir,
        advertise,
        cert_ttl,
        store,
    } = args;
    let dd = DataDir::new(&dir.data_dir);
    darkport_controller::init(
        &dd,
        &InitOptions {
            advertise: advertise.clone(),
            cert_ttl,
            store,
        },
    )?;
    println!(
        "initialized {} (advertise {advertise})",
        dir.data_dir.display()
    );
    println!(
        "start it with: darkport-controller run --data-dir {}",
        dir.data_dir.display()
    );
    Ok(())
}

pub fn join(args: JoinArgs) -> Result<()> {
    let JoinArgs {
        dir,
        advertise,
        name: n,
        store,
        from,
    } = args;
    let dd = DataDir::new(&dir.data_dir);
    datadir::join(
        &dd,
        &JoinOptions {
            advertise: advertise.clone(),
            name: name(&n)?,
            store,
            from,
        },
    )?;
    println!(
        "joined as controller {n} (advertise {advertise}); the CA key and token key are in {}",
        dir.data_dir.display()
    );
    println!(
        "delete the copies in the --from directory, then start it with: darkport-controller run --data-dir {}",
        dir.data_dir.display()
    );
    Ok(())
}

pub fn migrate(args: MigrateArgs) -> Result<()> {
    let dd = DataDir::new(&args.dir.data_dir);
    let m = datadir::migrate(&dd, &args.to)?;
    println!(
        "moved {} identities, {} services, {} policies, {} tokens and {} audit entries to {}",
        m.identities,
        m.services,
        m.policies,
        m.tokens,
        m.audit,
        darkport_controller::store::postgres::redact(&args.to)
    );
    println!(
        "{} now names that database; the old file is kept as state.db.migrated; start the controller again",
        dd.config().display()
    );
    Ok(())
}
