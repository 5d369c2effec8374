//! Golden bytes: every enum index and close code, and the worked examples
//! of docs/protocol.md, pinned so the wire format cannot drift silently.
//! A failure here means the protocol changed: bump `PROTOCOL_VERSION`,
//! update docs/protocol.md, and only then the expected bytes.

use darkport_proto::codec::{encode_frame, to_bytes, MAX_CONTROL_FRAME, MAX_DIAL_FRAME};
use darkport_proto::codes::{from_h2_code, CloseCode, StreamCode, H2_CODE_BASE, H2_CODE_SPAN};
use darkport_proto::identity::IdentityName;
use darkport_proto::msg::*;
use darkport_proto::policy::Selector;
use darkport_proto::token::TOKEN_PREFIX;
use darkport_proto::{
    ALPN_CONTROL, ALPN_DATA, ALPN_DATA_TCP, CONTROLLER_SERVER_NAME, PROTOCOL_VERSION,
    ROUTER_SERVER_NAME,
};

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn name(s: &str) -> IdentityName {
    IdentityName::new(s).expect("name")
}

/// Each unit variant encodes as its index, a big-endian u32.
#[track_caller]
fn assert_indices<T: serde::Serialize + std::fmt::Debug>(all: &[(T, u32)]) {
    for (value, index) in all {
        assert_eq!(
            to_bytes(value).expect("encode"),
            index.to_be_bytes(),
            "{value:?}"
        );
    }
}

#[test]
fn protocol_version_is_five() {
    assert_eq!(PROTOCOL_VERSION, 5);
}

#[test]
fn dial_status_indices() {
    let all = [
        (DialStatus::Ok, 0u32),
        (DialStatus::UnknownService, 1),
        (DialStatus::NotAuthorized, 2),
        (DialStatus::ServiceUnreachable, 3),
        (DialStatus::BadRequest, 4),
        (DialStatus::NotReady, 5),
        (DialStatus::WrongRouter, 6),
        (DialStatus::LimitReached, 7),
        (DialStatus::Draining, 8),
    ];
    assert_indices(&all);
}

#[test]
fn control_error_code_indices() {
    let all = [
        (ControlErrorCode::BadRequest, 0u32),
        (ControlErrorCode::Forbidden, 1),
        (ControlErrorCode::NotFound, 2),
        (ControlErrorCode::AlreadyExists, 3),
        (ControlErrorCode::TokenRejected, 4),
        (ControlErrorCode::Internal, 5),
        (ControlErrorCode::RateLimited, 6),
        (ControlErrorCode::Revoked, 7),
    ];
    assert_indices(&all);
}

#[test]
fn control_body_and_response_indices() {
    let bodies = [
        (
            ControlBody::Enroll(EnrollRequest {
                token: String::new(),
                csr_der: vec![],
            }),
            0u32,
        ),
        (ControlBody::Admin(AdminRequest::ListIdentities), 1),
        (
            ControlBody::RouterSync {
                advertise: String::new(),
            },
            2,
        ),
        (ControlBody::ListRouters, 3),
        (ControlBody::Renew { csr_der: vec![] }, 4),
        (
            ControlBody::RouterReport(RouterReport {
                snapshot_version: 0,
                clients: vec![],
                terminators: Default::default(),
            }),
            5,
        ),
        (ControlBody::ListControllers, 6),
    ];
    for (body, index) in bodies {
        assert_eq!(to_bytes(&body).expect("encode")[..4], index.to_be_bytes());
    }
    let responses = [
        (
            ControlResponse::Enrolled {
                cert_pem: String::new(),
                ca_pem: String::new(),
            },
            0u32,
        ),
        (ControlResponse::Admin(AdminResponse::Done), 1),
        (ControlResponse::Routers(vec![]), 3),
        (ControlResponse::Ack, 4),
        (
            ControlResponse::Error(ControlError {
                code: ControlErrorCode::Internal,
                message: String::new(),
            }),
            5,
        ),
        (ControlResponse::Controllers(vec![]), 6),
    ];
    for (resp, index) in responses {
        assert_eq!(to_bytes(&resp).expect("encode")[..4], index.to_be_bytes());
    }
}

#[test]
fn close_and_stream_codes() {
    let close = [
        (CloseCode::Done, 0u32),
        (CloseCode::ControlRefused, 2),
        (CloseCode::Forbidden, 3),
        (CloseCode::Revoked, 4),
        (CloseCode::Busy, 5),
        (CloseCode::RouterRevoked, 6),
    ];
    assert_eq!(close.len(), CloseCode::ALL.len());
    for (code, value) in close {
        assert_eq!(code.code(), value, "{code:?}");
        assert_eq!(CloseCode::from_code(u64::from(value)), Some(code));
    }
    assert_eq!(CloseCode::from_code(1), None);
    assert_eq!(CloseCode::from_code(7), None);
    assert_eq!(StreamCode::Refused.code(), 0);
    assert_eq!(StreamCode::Reset.code(), 1);
    assert_eq!(StreamCode::Cut.code(), 2);
    assert_eq!(StreamCode::Rejected.code(), 3);
    assert_eq!(StreamCode::ALL.len(), 4);
}

/// docs/protocol.md, section 13: over TLS over TCP the codes travel as
/// HTTP/2 error codes, "DP" in the top bytes.
#[test]
fn close_and_stream_codes_on_http2() {
    assert_eq!(H2_CODE_BASE, 0x4450_0000);
    assert_eq!(H2_CODE_SPAN, 0x1_0000);
    let close = [
        (CloseCode::Done, 0x4450_0000u32),
        (CloseCode::ControlRefused, 0x4450_0002),
        (CloseCode::Forbidden, 0x4450_0003),
        (CloseCode::Revoked, 0x4450_0004),
        (CloseCode::Busy, 0x4450_0005),
        (CloseCode::RouterRevoked, 0x4450_0006),
    ];
    assert_eq!(close.len(), CloseCode::ALL.len());
    for (code, h2) in close {
        assert_eq!(code.h2_code(), h2, "{code:?}");
        assert_eq!(from_h2_code(h2), Some(u64::from(code.code())), "{code:?}");
    }
    let stream = [
        (StreamCode::Refused, 0x4450_0000u32),
        (StreamCode::Reset, 0x4450_0001),
        (StreamCode::Cut, 0x4450_0002),
        (StreamCode::Rejected, 0x4450_0003),
    ];
    assert_eq!(stream.len(), StreamCode::ALL.len());
    for (code, h2) in stream {
        assert_eq!(code.h2_code(), h2, "{code:?}");
        assert_eq!(from_h2_code(h2), Some(u64::from(code.code())), "{code:?}");
    }
    // HTTP/2's own codes (NO_ERROR, PROTOCOL_ERROR, CANCEL) and anything
    // past the span are not ours.
    for h2 in [0x0, 0x1, 0x8, 0x4450_0000 - 1, 0x4451_0000, u32::MAX] {
        assert_eq!(from_h2_code(h2), None, "{h2:#x}");
    }
    assert_eq!(from_h2_code(0x4450_ffff), Some(0xffff));
}

/// docs/protocol.md, section 13.1: a close notice's reason is cut to
/// 1,024 bytes, at a character boundary.
#[test]
fn close_notice_reason_cap() {
    assert_eq!(MAX_CLOSE_REASON, 1024);
    let n = CloseNotice::new(CloseCode::Busy, "x".repeat(5000));
    assert_eq!((n.code, n.reason.len()), (5, 1024));
    // "é" is two bytes: 1,023 of "x" then "é" would end at 1,025.
    let n = CloseNotice::new(CloseCode::Revoked, "x".repeat(1023) + "é");
    assert_eq!(n.reason, "x".repeat(1023));
    let n = CloseNotice::new(CloseCode::Done, "short".into());
    assert_eq!(n.reason, "short");
    let longest = CloseNotice::new(CloseCode::RouterRevoked, "é".repeat(1000));
    assert!(encode_frame(&longest, MAX_DIAL_FRAME).is_ok());
}

/// docs/protocol.md, sections 4.1, 5.1 and 7: the names and prefixes
/// that cross the wire as text.
#[test]
fn server_names_alpns_and_token_prefix() {
    assert_eq!(ROUTER_SERVER_NAME, "darkport-router");
    assert_eq!(CONTROLLER_SERVER_NAME, "darkport-controller");
    assert_eq!(ALPN_DATA, b"darkport/1");
    assert_eq!(ALPN_DATA_TCP, b"darkport-tcp/1");
    assert_eq!(ALPN_CONTROL, b"darkport-ctl/1");
    assert_eq!(TOKEN_PREFIX, "dpt1");
}

/// docs/protocol.md, section 6.5.
#[test]
fn worked_examples_of_protocol_md() {
    assert_eq!(
        hex(&encode_frame(&DialRequest::new("fluentd"), MAX_DIAL_FRAME).expect("encode")),
        "00000011".to_owned() + "0005" + "0000000000000007" + "666c75656e7464"
    );
    let ok = DialResponse {
        status: DialStatus::Ok,
        message: String::new(),
    };
    assert_eq!(
        hex(&encode_frame(&ok, MAX_DIAL_FRAME).expect("encode")),
        "0000000c".to_owned() + "00000000" + "0000000000000000"
    );
    assert_eq!(
        hex(&encode_frame(
            &ControlRequest::new(ControlBody::ListRouters),
            MAX_CONTROL_FRAME
        )
        .expect("encode")),
        "00000006".to_owned() + "0005" + "00000003"
    );
    let report = ControlRequest::new(ControlBody::RouterReport(RouterReport {
        snapshot_version: 7,
        clients: vec![name("app-1")],
        terminators: Default::default(),
    }));
    assert_eq!(
        hex(&encode_frame(&report, MAX_CONTROL_FRAME).expect("encode")),
        "0000002b".to_owned()
            + "0005"
            + "00000005"
            + "0000000000000007"
            + "0000000000000001"
            + "0000000000000005"
            + "6170702d31"
            + "0000000000000000" // terminators: none
    );
    assert_eq!(
        hex(&encode_frame(&ControlResponse::Ack, MAX_CONTROL_FRAME).expect("encode")),
        "0000000400000004"
    );
    assert_eq!(
        hex(&to_bytes(&Selector::Role(name("logs"))).expect("encode")),
        "00000001".to_owned() + "0000000000000004" + "6c6f6773"
    );
}

/// docs/protocol.md, section 6.2: `FluentSettings` as of version 4, and the
/// version window: what a version-3 peer may still ask.
#[test]
fn fluent_settings_of_version_four() {
    use darkport_proto::policy::{AppHandshake, EventTimeForm, FluentSettings, FluentUser};
    assert_eq!(
        to_bytes(&EventTimeForm::Unwrap).expect("encode"),
        [0, 0, 0, 0]
    );
    assert_eq!(
        to_bytes(&EventTimeForm::Keep).expect("encode"),
        [0, 0, 0, 1]
    );
    assert_eq!(to_bytes(&AppHandshake::Off).expect("encode"), [0, 0, 0, 0]);
    assert_eq!(
        to_bytes(&AppHandshake::AnyKey).expect("encode"),
        [0, 0, 0, 1]
    );
    let s = FluentSettings {
        identity_key: "id".into(),
        roles_key: None,
        router_key: None,
        shared_key: Some("k".into()),
        service_user: Some(FluentUser {
            username: "u".into(),
            password: "p".into(),
        }),
        event_time: EventTimeForm::Keep,
        metadata_key: None,
        app_handshake: AppHandshake::SharedKey("a".into()),
    };
    assert_eq!(
        hex(&to_bytes(&s).expect("encode")),
        "0000000000000002".to_owned()
            + "6964" // identity_key "id"
            + "00" // roles_key None
            + "00" // router_key None
            + "01" + "0000000000000001" + "6b" // shared_key Some("k")
            + "01" + "0000000000000001" + "75" + "0000000000000001" + "70" // service_user
            + "00000001" // event_time Keep
            + "00" // metadata_key None
            + "00000002" + "0000000000000001" + "61" // app_handshake SharedKey("a")
    );
}

#[test]
fn version_three_peers_may_still_dial_enroll_and_renew() {
    use darkport_proto::msg::dial_version_supported;
    assert!(dial_version_supported(3));
    assert!(dial_version_supported(4));
    assert!(dial_version_supported(5));
    assert!(!dial_version_supported(2));
    assert!(!dial_version_supported(6));
    let renew = ControlBody::Renew { csr_der: vec![] };
    assert!(renew.accepts_version(3) && renew.accepts_version(4));
    assert!(!renew.accepts_version(2));
    assert!(ControlBody::ListRouters.accepts_version(3));
    let admin = ControlBody::Admin(AdminRequest::ListIdentities);
    assert!(!admin.accepts_version(3), "admin requests carry services");
    assert!(
        !admin.accepts_version(4),
        "admin requests carry policies, which have a kind since version 5"
    );
    assert!(admin.accepts_version(5));
    let sync = ControlBody::RouterSync {
        advertise: String::new(),
    };
    assert!(!sync.accepts_version(3), "snapshots carry services");
}

/// docs/protocol.md, sections 6.2 and 6.3: the enums of hosting (version
/// 5), and the admin variants added for it, at the end of their enums.
#[test]
fn hosting_enums_and_admin_indices() {
    use darkport_proto::policy::{PolicyKind, ServiceEntry, TerminatorStrategy};
    assert_indices(&[(PolicyKind::Dial, 0), (PolicyKind::Bind, 1)]);
    assert_eq!(PolicyKind::default(), PolicyKind::Dial);
    let strategies = [
        (TerminatorStrategy::LowestCost, 0),
        (TerminatorStrategy::Weighted, 1),
        (TerminatorStrategy::Random, 2),
        (TerminatorStrategy::Sticky, 3),
    ];
    assert_eq!(strategies.len(), TerminatorStrategy::ALL.len());
    assert_indices(&strategies);
    assert_eq!(
        TerminatorStrategy::default(),
        TerminatorStrategy::LowestCost
    );
    assert_indices(&[
        (Precedence::Required, 0),
        (Precedence::Default, 1),
        (Precedence::Failed, 2),
    ]);
    let requests = [
        (
            AdminRequest::CreatePolicy {
                name: name("p"),
                services: vec![],
                identities: vec![],
                tags: vec![],
                kind: PolicyKind::Bind,
            },
            6u32,
        ),
        (
            AdminRequest::UpdateService {
                name: name("s"),
                address: None,
                protocol: None,
                strategy: None,
            },
            18,
        ),
        (AdminRequest::ShowService { name: name("s") }, 19),
    ];
    for (req, index) in requests {
        assert_eq!(to_bytes(&req).expect("encode")[..4], index.to_be_bytes());
    }
    // CreatePolicy's kind is its last field.
    let bind = AdminRequest::CreatePolicy {
        name: name("p"),
        services: vec![Selector::All],
        identities: vec![Selector::All],
        tags: vec![],
        kind: PolicyKind::Bind,
    };
    assert_eq!(
        hex(&to_bytes(&bind).expect("encode")),
        "00000006".to_owned()
            + "0000000000000001" // name
            + "70"
            + "0000000000000001" // services: [All]
            + "00000000"
            + "0000000000000001" // identities: [All]
            + "00000000"
            + "0000000000000000" // tags: none
            + "00000001" // kind: Bind
    );
    let service = ServiceEntry {
        name: name("s"),
        address: String::new(),
        roles: vec![],
        protocol: Default::default(),
        strategy: TerminatorStrategy::Sticky,
    };
    let responses = [
        (AdminResponse::Done, 9u32),
        (
            AdminResponse::Service(ServiceDetail {
                entry: service,
                terminators: vec![],
            }),
            10,
        ),
    ];
    for (resp, index) in responses {
        assert_eq!(to_bytes(&resp).expect("encode")[..4], index.to_be_bytes());
    }
}
