//! What a refused TLS handshake tells the user to do ([`Hint`]), decided
//! from typed errors, never from their text.
//!
//! Over TCP, rustls's own [`rustls::Error`] is at hand (tokio-rustls puts
//! it inside the `io::Error`, and the I/O under h2 keeps it before h2
//! turns it into text). Over QUIC, quinn keeps only the TLS alert, as a
//! transport error code (`0x100 + alert`, RFC 9001 section 4.8), and the
//! error's text, so the alert decides.

use rustls::{AlertDescription, CertificateError};

/// A refused certificate, said in words a user can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hint {
    /// The peer refused our certificate: its CA did not issue it.
    OursFromAnotherCa,
    /// The peer refused our certificate: it has expired.
    OursExpired,
    /// We refused the peer's certificate: our CA did not issue it.
    TheirsFromAnotherCa,
}

impl Hint {
    /// What to do, as a suffix for the error's text (`"; ..."`).
    pub fn advice(self) -> &'static str {
        match self {
            Hint::OursFromAnotherCa => "; our certificate was not issued by the peer's Darkport CA (enrolled with another controller?)",
            Hint::OursExpired => "; our certificate has expired; renew it or re-enroll with a new token",
            Hint::TheirsFromAnotherCa => "; the peer's certificate was not issued by this Darkport CA (enrolled with another controller?)",
        }
    }

    /// [`Hint::advice`], or nothing.
    pub fn suffix(hint: Option<Hint>) -> &'static str {
        hint.map_or("", Hint::advice)
    }

    /// From a rustls error: an alert the peer sent, or our verdict on the
    /// peer's certificate.
    pub fn from_rustls(e: &rustls::Error) -> Option<Hint> {
        match e {
            // What a rustls peer has sent over TCP for a certificate of
            // another CA (the QUIC table below differs: it is the one each
            // transport has always used).
            rustls::Error::AlertReceived(
                AlertDescription::UnknownCA | AlertDescription::BadCertificate,
            ) => Some(Hint::OursFromAnotherCa),
            rustls::Error::AlertReceived(AlertDescription::CertificateExpired) => {
                Some(Hint::OursExpired)
            }
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => Some(Hint::TheirsFromAnotherCa),
            _ => None,
        }
    }

    /// From an I/O error that carries a rustls error (tokio-rustls's).
    pub fn from_io(e: &std::io::Error) -> Option<Hint> {
        let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
        Hint::from_rustls(inner)
    }

    /// From a QUIC connection error: the alert the peer closed with, or
    /// the one we sent on refusing its certificate.
    pub fn from_quic(e: &quinn::ConnectionError) -> Option<Hint> {
        match e {
            quinn::ConnectionError::ConnectionClosed(c) => {
                Hint::from_peer_alert(alert_in(c.error_code)?)
            }
            quinn::ConnectionError::TransportError(t) => Hint::from_our_alert(alert_in(t.code)?),
            _ => None,
        }
    }

    /// A QUIC peer refused the handshake with `alert`: rustls sends
    /// `UnknownCA` for a certificate of an unknown issuer and
    /// `DecryptError` for a bad signature on it.
    pub fn from_peer_alert(alert: AlertDescription) -> Option<Hint> {
        use AlertDescription as A;
        match alert {
            A::UnknownCA | A::DecryptError => Some(Hint::OursFromAnotherCa),
            A::CertificateExpired => Some(Hint::OursExpired),
            _ => None,
        }
    }

    /// We refused a QUIC handshake with `alert` (see
    /// [`Hint::from_peer_alert`]).
    pub fn from_our_alert(alert: AlertDescription) -> Option<Hint> {
        use AlertDescription as A;
        match alert {
            A::UnknownCA | A::DecryptError => Some(Hint::TheirsFromAnotherCa),
            _ => None,
        }
    }
}

/// The TLS alert in a QUIC transport error code, if it is a crypto error.
fn alert_in(code: quinn::TransportErrorCode) -> Option<AlertDescription> {
    (0..=u8::MAX)
        .find(|a| quinn::TransportErrorCode::crypto(*a) == code)
        .map(AlertDescription::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::AlertDescription as A;

    fn closed(alert: A) -> quinn::ConnectionError {
        quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(u8::from(alert)),
            frame_type: None,
            reason: bytes::Bytes::new(),
        })
    }

    #[test]
    fn tls_errors_give_hints() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let table = [
            (
                rustls::Error::AlertReceived(A::UnknownCA),
                Some(Hint::OursFromAnotherCa),
            ),
            (
                rustls::Error::AlertReceived(A::BadCertificate),
                Some(Hint::OursFromAnotherCa),
            ),
            (
                rustls::Error::AlertReceived(A::CertificateExpired),
                Some(Hint::OursExpired),
            ),
            (rustls::Error::AlertReceived(A::HandshakeFailure), None),
            (rustls::Error::AlertReceived(A::DecryptError), None),
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                Some(Hint::TheirsFromAnotherCa),
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::BadSignature),
                Some(Hint::TheirsFromAnotherCa),
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                None,
            ),
            (rustls::Error::DecryptError, None),
        ];
        for (e, hint) in table {
            assert_eq!(Hint::from_rustls(&e), hint, "{e}");
            assert_eq!(Hint::from_io(&io(e.clone())), hint, "{e}");
        }
        let plain = std::io::Error::new(std::io::ErrorKind::InvalidData, "alert: UnknownCA");
        assert_eq!(Hint::from_io(&plain), None, "text is never read");
    }

    #[test]
    fn quic_alerts_give_hints() {
        let table = [
            (A::UnknownCA, Some(Hint::OursFromAnotherCa)),
            (A::DecryptError, Some(Hint::OursFromAnotherCa)),
            (A::CertificateExpired, Some(Hint::OursExpired)),
            (A::BadCertificate, None),
            (A::HandshakeFailure, None),
            (A::CertificateUnknown, None),
        ];
        for (alert, hint) in table {
            assert_eq!(Hint::from_quic(&closed(alert)), hint, "{alert:?}");
        }
        assert_eq!(
            Hint::from_our_alert(A::UnknownCA),
            Some(Hint::TheirsFromAnotherCa)
        );
        assert_eq!(
            Hint::from_our_alert(A::DecryptError),
            Some(Hint::TheirsFromAnotherCa)
        );
        assert_eq!(Hint::from_our_alert(A::CertificateExpired), None);
        // Not a crypto error: no alert in it.
        let refused = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::CONNECTION_REFUSED,
            frame_type: None,
            reason: bytes::Bytes::new(),
        });
        assert_eq!(Hint::from_quic(&refused), None);
        assert_eq!(Hint::from_quic(&quinn::ConnectionError::TimedOut), None);
    }
}
