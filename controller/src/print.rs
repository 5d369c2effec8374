//! How the CLI shows admin answers: text tables, or JSON for `--json`.
//!
//! Apart from the binary so the exact text, which scripts and the
//! whole-system tests read, is pinned by unit tests. Every function writes
//! to the writer it is given (the binary gives stdout, tests a `Vec<u8>`)
//! and reads no clock: the only times shown are those in the answer,
//! printed as RFC 3339 UTC.
//!
//! - [`response`]: any [`AdminResponse`], as a table or as JSON.
//! - [`json`]: the `--json` form.
//! - One function per table: [`identities`], [`identity`], [`services`],
//!   [`service`], [`policies`], [`router_policies`], [`routers`],
//!   [`explanation`], [`audit`].
//!
//! An empty value in a list column shows as `-`, so columns never vanish.

use std::fmt::Display;
use std::io::{self, Write};

use darkport_proto::msg::{AdminResponse, AuditEntry, IdentityInfo, RouterInfo, ServiceDetail};
use darkport_proto::policy::{
    Explanation, PolicyEntry, PolicyKind, RouterPolicyEntry, ServiceEntry,
};
use darkport_proto::token::fmt_time;

/// Writes `resp` as JSON if `json`, else as its table. Answers with
/// nothing to show (`Token`, `Done`) write nothing as a table and `null`
/// as JSON.
pub fn response(out: &mut dyn Write, resp: &AdminResponse, json: bool) -> io::Result<()> {
    if json {
        return self::json(out, resp);
    }
    match resp {
        AdminResponse::Identities(v) => identities(out, v),
        AdminResponse::Identity(i) => identity(out, i),
        AdminResponse::Services(v) => services(out, v),
        AdminResponse::Policies(v) => policies(out, v),
        AdminResponse::RouterPolicies(v) => router_policies(out, v),
        AdminResponse::Routers(v) => routers(out, v),
        AdminResponse::Explanation(e) => explanation(out, e),
        AdminResponse::Audit(v) => audit(out, v),
        AdminResponse::Service(d) => service(out, d),
        AdminResponse::Token { .. } | AdminResponse::Done => Ok(()),
    }
}

/// Writes the payload of `resp` as pretty JSON and a newline (`null` for
/// answers without one). Nothing is written if it cannot be serialized.
pub fn json(out: &mut dyn Write, resp: &AdminResponse) -> io::Result<()> {
    let text = match resp {
        AdminResponse::Identities(v) => serde_json::to_string_pretty(v)?,
        AdminResponse::Services(v) => serde_json::to_string_pretty(v)?,
        AdminResponse::Policies(v) => serde_json::to_string_pretty(v)?,
        AdminResponse::Routers(v) => serde_json::to_string_pretty(v)?,
        AdminResponse::Identity(v) => serde_json::to_string_pretty(v)?,
        AdminResponse::RouterPolicies(v) => serde_json::to_string_pretty(v)?,
        AdminResponse::Explanation(v) => serde_json::to_string_pretty(v)?,
        AdminResponse::Audit(v) => serde_json::to_string_pretty(v)?,
        AdminResponse::Service(v) => serde_json::to_string_pretty(v)?,
        AdminResponse::Token { .. } | AdminResponse::Done => "null".into(),
    };
    writeln!(out, "{text}")
}

/// `identity list`: one line per identity. The fingerprint is cut to 16
/// hex digits, enough to tell certificates apart in a table.
pub fn identities(out: &mut dyn Write, v: &[IdentityInfo]) -> io::Result<()> {
    writeln!(
        out,
        "{:<20} {:<7} {:<20} {:<17} {:<21} {:<8} {:<21} CONNECTED TO",
        "NAME", "KIND", "ROLES", "FINGERPRINT", "CERT EXPIRES", "STATE", "LAST SEEN"
    )?;
    for i in v {
        let fp = i
            .fingerprint
            .as_deref()
            .map(|f| &f[..16.min(f.len())])
            .unwrap_or("(not enrolled)");
        let exp = time_or(i.cert_expires_at, "-");
        let state = if i.revoked_at.is_some() {
            "revoked"
        } else {
            "active"
        };
        let seen = time_or(i.last_seen, "-");
        writeln!(
            out,
            "{:<20} {:<7} {:<20} {:<17} {:<21} {:<8} {:<21} {}",
            i.name,
            i.kind,
            list(&i.roles, "#"),
            fp,
            exp,
            state,
            seen,
            list(&i.connected_to, "")
        )?;
    }
    Ok(())
}

/// `identity show`: one field per line, with the whole fingerprint.
pub fn identity(out: &mut dyn Write, i: &IdentityInfo) -> io::Result<()> {
    writeln!(out, "name:          {}", i.name)?;
    writeln!(out, "kind:          {}", i.kind)?;
    writeln!(out, "roles:         {}", list(&i.roles, "#"))?;
    writeln!(
        out,
        "fingerprint:   {}",
        i.fingerprint.as_deref().unwrap_or("(not enrolled)")
    )?;
    writeln!(out, "cert expires:  {}", time_or(i.cert_expires_at, "-"))?;
    writeln!(out, "revoked:       {}", time_or(i.revoked_at, "no"))?;
    writeln!(out, "last seen:     {}", time_or(i.last_seen, "never"))?;
    writeln!(out, "connected to:  {}", list(&i.connected_to, ""))
}

/// `service list`. Shared keys are not shown (the controller redacts them
/// anyway). A service with no address is reached through terminators
/// only: `(hosted)`.
pub fn services(out: &mut dyn Write, v: &[ServiceEntry]) -> io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<32} {:<15} {:<12} ROLES",
        "NAME", "ADDRESS", "PROTOCOL", "STRATEGY"
    )?;
    for s in v {
        writeln!(
            out,
            "{:<24} {:<32} {:<15} {:<12} {}",
            s.name,
            address(s),
            s.protocol.name(),
            s.strategy.name(),
            list(&s.roles, "#")
        )?;
    }
    Ok(())
}

/// A service's address, or `(hosted)` when it has none.
fn address(s: &ServiceEntry) -> &str {
    if s.has_address() {
        &s.address
    } else {
        "(hosted)"
    }
}

/// `service show`: one field per line, then the terminators, one line
/// each (`PRECEDENCE` is the hoster's health: `failed` ones are used
/// last).
pub fn service(out: &mut dyn Write, d: &ServiceDetail) -> io::Result<()> {
    let s = &d.entry;
    writeln!(out, "name:         {}", s.name)?;
    writeln!(out, "address:      {}", address(s))?;
    writeln!(out, "protocol:     {}", s.protocol.name())?;
    writeln!(out, "strategy:     {}", s.strategy.name())?;
    writeln!(out, "roles:        {}", list(&s.roles, "#"))?;
    writeln!(out, "terminators:  {}", d.terminators.len())?;
    if d.terminators.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<16} {:<20} {:>5} {:<10} {:>7}",
        "HOSTER", "INSTANCE", "ROUTER", "COST", "PRECEDENCE", "STREAMS"
    )?;
    for t in &d.terminators {
        writeln!(
            out,
            "{:<20} {:<16} {:<20} {:>5} {:<10} {:>7}",
            t.hoster,
            t.instance,
            t.router,
            t.cost,
            t.precedence.as_str(),
            t.streams
        )?;
    }
    Ok(())
}

/// `policy list`. A dial policy without tag patterns allows any tag:
/// `(any)`; bind policies have none: `-`.
pub fn policies(out: &mut dyn Write, v: &[PolicyEntry]) -> io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<5} {:<32} {:<32} TAGS",
        "NAME", "TYPE", "SERVICES", "IDENTITIES"
    )?;
    for p in v {
        let tags = match (p.kind, p.tags.is_empty()) {
            (PolicyKind::Bind, true) => "-".to_string(),
            (_, true) => "(any)".to_string(),
            (_, false) => p.tags.join(","),
        };
        writeln!(
            out,
            "{:<24} {:<5} {:<32} {:<32} {}",
            p.name,
            p.kind.name(),
            list(&p.services, ""),
            list(&p.identities, ""),
            tags
        )?;
    }
    Ok(())
}

/// `router-policy list`.
pub fn router_policies(out: &mut dyn Write, v: &[RouterPolicyEntry]) -> io::Result<()> {
    writeln!(out, "{:<24} {:<32} SERVICES", "NAME", "ROUTERS")?;
    for p in v {
        writeln!(
            out,
            "{:<24} {:<32} {}",
            p.name,
            list(&p.routers, ""),
            list(&p.services, "")
        )?;
    }
    Ok(())
}

/// `router list`. `SNAPSHOT` is the policy version the router last said
/// it enforces, `-` before it has said.
pub fn routers(out: &mut dyn Write, v: &[RouterInfo]) -> io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<24} {:<8} {:<9} SERVES",
        "NAME", "ADVERTISE", "STATE", "SNAPSHOT"
    )?;
    for r in v {
        let version = r
            .snapshot_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        let state = if r.online { "online" } else { "offline" };
        writeln!(
            out,
            "{:<24} {:<24} {:<8} {:<9} {}",
            r.name,
            r.advertise,
            state,
            version,
            list(&r.services, "")
        )?;
    }
    Ok(())
}

/// `policy explain`: the verdict on dialing (what the exit status says),
/// its reasons (hosting's among them), then the policies behind both.
pub fn explanation(out: &mut dyn Write, e: &Explanation) -> io::Result<()> {
    writeln!(out, "{}", if e.allowed { "ALLOWED" } else { "DENIED" })?;
    for r in &e.reasons {
        writeln!(out, "  - {r}")?;
    }
    if !e.dial_policies.is_empty() {
        writeln!(out, "service policies: {}", list(&e.dial_policies, ""))?;
    }
    if !e.bind_policies.is_empty() {
        writeln!(
            out,
            "bind policies: {} (may host: {})",
            list(&e.bind_policies, ""),
            if e.may_host { "yes" } else { "no" }
        )?;
    }
    for (router, policies) in &e.routers {
        writeln!(
            out,
            "router {router} may serve it (router policies: {})",
            list(policies, "")
        )?;
    }
    Ok(())
}

/// `audit`: one line per entry, in the order given, with no header so
/// the lines can be grepped.
pub fn audit(out: &mut dyn Write, v: &[AuditEntry]) -> io::Result<()> {
    for a in v {
        writeln!(out, "{}  {:<12} {}", fmt_time(a.at), a.actor, a.action)?;
    }
    Ok(())
}

/// A list column: items joined by commas, each after `prefix`; `-` if
/// there are none.
fn list<T: Display>(v: &[T], prefix: &str) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter()
        .map(|x| format!("{prefix}{x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A Unix time as RFC 3339, or `none` if absent.
fn time_or(t: Option<u64>, none: &str) -> String {
    t.map(fmt_time).unwrap_or_else(|| none.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use darkport_proto::identity::{IdentityName, Kind};
    use darkport_proto::msg::{Precedence, TerminatorInfo};
    use darkport_proto::policy::{FluentSettings, Selector, ServiceProtocol, TerminatorStrategy};

    /// 2026-01-02T03:04:05Z.
    const T1: u64 = 1_767_323_045;
    /// 2026-01-09T03:04:05Z.
    const T2: u64 = T1 + 7 * 86_400;

    fn n(s: &str) -> IdentityName {
        IdentityName::new(s).unwrap()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    fn render(resp: &AdminResponse, json: bool) -> String {
        let mut out = Vec::new();
        response(&mut out, resp, json).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn enrolled() -> IdentityInfo {
        IdentityInfo {
            name: n("web-1"),
            kind: Kind::Client,
            roles: vec![n("web"), n("eu")],
            fingerprint: Some("0123456789abcdef0123456789abcdef".into()),
            cert_expires_at: Some(T2),
            revoked_at: None,
            last_seen: Some(T1),
            connected_to: vec![n("r1"), n("r2")],
        }
    }

    fn fresh() -> IdentityInfo {
        IdentityInfo {
            name: n("edge"),
            kind: Kind::Router,
            roles: vec![],
            fingerprint: None,
            cert_expires_at: None,
            revoked_at: Some(T1),
            last_seen: None,
            connected_to: vec![],
        }
    }

    #[test]
    fn fmt_time_is_rfc3339_utc() {
        // The expected texts below rely on these.
        assert_eq!(fmt_time(T1), "2026-01-02T03:04:05Z");
        assert_eq!(fmt_time(T2), "2026-01-09T03:04:05Z");
    }

    #[test]
    fn identities_table() {
        let text = render(&AdminResponse::Identities(vec![enrolled(), fresh()]), false);
        assert_eq!(
            text,
            "\
NAME                 KIND    ROLES                FINGERPRINT       CERT EXPIRES          STATE    LAST SEEN             CONNECTED TO
web-1                client  #web,#eu             0123456789abcdef  2026-01-09T03:04:05Z  active   2026-01-02T03:04:05Z  r1,r2
edge                 router  -                    (not enrolled)    -                     revoked  -                     -
"
        );
    }

    #[test]
    fn identities_empty_is_the_header_alone() {
        let text = render(&AdminResponse::Identities(vec![]), false);
        assert_eq!(
            text,
            "NAME                 KIND    ROLES                FINGERPRINT       CERT EXPIRES          STATE    LAST SEEN             CONNECTED TO\n"
        );
    }

    #[test]
    fn a_value_wider_than_its_column_pushes_the_rest_right() {
        let mut i = fresh();
        i.name = n("a-very-long-identity-name");
        i.fingerprint = Some("abc".into());
        let text = render(&AdminResponse::Identities(vec![i]), false);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(
            row,
            "a-very-long-identity-name router  -                    abc               -                     revoked  -                     -"
        );
    }

    #[test]
    fn identity_show() {
        let text = render(&AdminResponse::Identity(enrolled()), false);
        assert_eq!(
            text,
            "\
name:          web-1
kind:          client
roles:         #web,#eu
fingerprint:   0123456789abcdef0123456789abcdef
cert expires:  2026-01-09T03:04:05Z
revoked:       no
last seen:     2026-01-02T03:04:05Z
connected to:  r1,r2
"
        );
        let text = render(&AdminResponse::Identity(fresh()), false);
        assert_eq!(
            text,
            "\
name:          edge
kind:          router
roles:         -
fingerprint:   (not enrolled)
cert expires:  -
revoked:       2026-01-02T03:04:05Z
last seen:     never
connected to:  -
"
        );
    }

    #[test]
    fn services_table() {
        let v = vec![
            ServiceEntry {
                name: n("logs"),
                address: "127.0.0.1:24224".into(),
                roles: vec![n("fluent"), n("prod")],
                protocol: ServiceProtocol::FluentForward(FluentSettings::default()),
                strategy: Default::default(),
            },
            ServiceEntry {
                name: n("db"),
                address: "db.internal.example:5432".into(),
                roles: vec![],
                protocol: ServiceProtocol::Tcp,
                strategy: Default::default(),
            },
            hosted_api(),
        ];
        let text = render(&AdminResponse::Services(v), false);
        assert_eq!(
            text,
            "\
NAME                     ADDRESS                          PROTOCOL        STRATEGY     ROLES
logs                     127.0.0.1:24224                  fluent-forward  lowest-cost  #fluent,#prod
db                       db.internal.example:5432         tcp             lowest-cost  -
api                      (hosted)                         tcp             sticky       #web
"
        );
        assert_eq!(
            render(&AdminResponse::Services(vec![]), false),
            "NAME                     ADDRESS                          PROTOCOL        STRATEGY     ROLES\n"
        );
    }

    fn hosted_api() -> ServiceEntry {
        ServiceEntry {
            name: n("api"),
            address: String::new(),
            roles: vec![n("web")],
            protocol: ServiceProtocol::Tcp,
            strategy: TerminatorStrategy::Sticky,
        }
    }

    #[test]
    fn service_show() {
        let terminator = |hoster: &str, router: &str, precedence| TerminatorInfo {
            service: "api".into(),
            hoster: n(hoster),
            instance: "api-7f9c".into(),
            router: n(router),
            cost: 20,
            precedence,
            streams: 3,
        };
        let d = ServiceDetail {
            entry: hosted_api(),
            terminators: vec![
                terminator("api-host-1", "r1", Precedence::Default),
                terminator("api-host-2", "r2", Precedence::Failed),
            ],
        };
        assert_eq!(
            render(&AdminResponse::Service(d.clone()), false),
            "\
name:         api
address:      (hosted)
protocol:     tcp
strategy:     sticky
roles:        #web
terminators:  2
HOSTER               INSTANCE         ROUTER                COST PRECEDENCE STREAMS
api-host-1           api-7f9c         r1                      20 default          3
api-host-2           api-7f9c         r2                      20 failed           3
"
        );
        let none = ServiceDetail {
            terminators: vec![],
            ..d.clone()
        };
        assert!(render(&AdminResponse::Service(none), false).ends_with("terminators:  0\n"));
        let back: ServiceDetail =
            serde_json::from_str(&render(&AdminResponse::Service(d.clone()), true)).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn policies_table() {
        let v = vec![
            PolicyEntry {
                name: n("ship-logs"),
                services: vec![sel("logs")],
                identities: vec![sel("#web"), sel("@batch")],
                tags: vec!["app.${identity}.**".into(), "sys.*".into()],
                kind: Default::default(),
            },
            PolicyEntry {
                name: n("all"),
                services: vec![sel("#all")],
                identities: vec![sel("#all")],
                tags: vec![],
                kind: Default::default(),
            },
            PolicyEntry {
                name: n("host-api"),
                services: vec![sel("api")],
                identities: vec![sel("#api-hosts")],
                tags: vec![],
                kind: PolicyKind::Bind,
            },
        ];
        let text = render(&AdminResponse::Policies(v), false);
        assert_eq!(
            text,
            "\
NAME                     TYPE  SERVICES                         IDENTITIES                       TAGS
ship-logs                dial  @logs                            #web,@batch                      app.${identity}.**,sys.*
all                      dial  #all                             #all                             (any)
host-api                 bind  @api                             #api-hosts                       -
"
        );
        assert_eq!(
            render(&AdminResponse::Policies(vec![]), false),
            "NAME                     TYPE  SERVICES                         IDENTITIES                       TAGS\n"
        );
    }

    #[test]
    fn router_policies_table() {
        let v = vec![
            RouterPolicyEntry {
                name: n("eu-serves-logs"),
                routers: vec![sel("#eu"), sel("r9")],
                services: vec![sel("logs")],
            },
            RouterPolicyEntry {
                name: n("none"),
                routers: vec![],
                services: vec![],
            },
        ];
        let text = render(&AdminResponse::RouterPolicies(v), false);
        assert_eq!(
            text,
            "\
NAME                     ROUTERS                          SERVICES
eu-serves-logs           #eu,@r9                          @logs
none                     -                                -
"
        );
        assert_eq!(
            render(&AdminResponse::RouterPolicies(vec![]), false),
            "NAME                     ROUTERS                          SERVICES\n"
        );
    }

    #[test]
    fn routers_table() {
        let v = vec![
            RouterInfo {
                name: n("r1"),
                advertise: "r1.example:4433".into(),
                online: true,
                snapshot_version: Some(42),
                services: vec![n("logs"), n("db")],
            },
            RouterInfo {
                name: n("r2"),
                advertise: "10.0.0.2:4433".into(),
                online: false,
                snapshot_version: None,
                services: vec![],
            },
        ];
        let text = render(&AdminResponse::Routers(v), false);
        assert_eq!(
            text,
            "\
NAME                     ADVERTISE                STATE    SNAPSHOT  SERVES
r1                       r1.example:4433          online   42        logs,db
r2                       10.0.0.2:4433            offline  -         -
"
        );
        assert_eq!(
            render(&AdminResponse::Routers(vec![]), false),
            "NAME                     ADVERTISE                STATE    SNAPSHOT  SERVES\n"
        );
    }

    #[test]
    fn explanation_allowed_and_denied() {
        let allowed = Explanation {
            allowed: true,
            dial_policies: vec![n("ship-logs"), n("all")],
            routers: vec![
                (n("r1"), vec![n("eu-serves-logs")]),
                (n("r2"), vec![n("a"), n("b")]),
            ],
            reasons: vec!["service policy ship-logs allows it".into()],
            tag_allowed: None,
            bind_policies: vec![n("host-logs")],
            may_host: true,
        };
        assert_eq!(
            render(&AdminResponse::Explanation(allowed), false),
            "\
ALLOWED
  - service policy ship-logs allows it
service policies: ship-logs,all
bind policies: host-logs (may host: yes)
router r1 may serve it (router policies: eu-serves-logs)
router r2 may serve it (router policies: a,b)
"
        );
        let denied = Explanation {
            allowed: false,
            dial_policies: vec![],
            routers: vec![],
            reasons: vec!["no service policy allows it".into(), "no router".into()],
            tag_allowed: None,
            bind_policies: vec![],
            may_host: false,
        };
        assert_eq!(
            render(&AdminResponse::Explanation(denied), false),
            "DENIED\n  - no service policy allows it\n  - no router\n"
        );
    }

    #[test]
    fn audit_lines() {
        let v = vec![
            AuditEntry {
                at: T1,
                actor: "admin".into(),
                action: "created service logs".into(),
            },
            AuditEntry {
                at: T2,
                actor: "a-long-actor-name".into(),
                action: "enrolled".into(),
            },
        ];
        assert_eq!(
            render(&AdminResponse::Audit(v), false),
            "\
2026-01-02T03:04:05Z  admin        created service logs
2026-01-09T03:04:05Z  a-long-actor-name enrolled
"
        );
        assert_eq!(render(&AdminResponse::Audit(vec![]), false), "");
    }

    #[test]
    fn nothing_to_show() {
        assert_eq!(render(&AdminResponse::Done, false), "");
        let token = AdminResponse::Token {
            token: "dpt1.secret".into(),
            expires_at: T1,
        };
        assert_eq!(render(&token, false), "");
        assert_eq!(render(&token, true), "null\n");
        assert_eq!(render(&AdminResponse::Done, true), "null\n");
    }

    #[test]
    fn json_is_the_pretty_payload() {
        assert_eq!(render(&AdminResponse::Identities(vec![]), true), "[]\n");
        let v = vec![AuditEntry {
            at: T1,
            actor: "admin".into(),
            action: "x".into(),
        }];
        assert_eq!(
            render(&AdminResponse::Audit(v), true),
            "\
[
  {
    \"at\": 1767323045,
    \"actor\": \"admin\",
    \"action\": \"x\"
  }
]
"
        );
        let text = render(&AdminResponse::Identity(enrolled()), true);
        let back: IdentityInfo = serde_json::from_str(&text).unwrap();
        assert_eq!(back, enrolled());
    }

    #[test]
    fn a_failing_writer_gives_its_error() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = response(&mut Broken, &AdminResponse::Routers(vec![]), false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
