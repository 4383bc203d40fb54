//! What a failed TLS handshake with PostgreSQL or Redis means, so that the error the
//! daemon prints says which setting to look at instead of only rustls' words.

use std::error::Error;
use std::sync::Arc;

use rustls::CertificateError;

/// Why the server's certificate (or the TLS handshake as a whole) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsProblem {
    /// Not signed by a CA the client trusts (the CA file or Mozilla's roots).
    Untrusted,
    /// Signed by a trusted CA, but not for the host name the client connected to.
    WrongName,
    /// Refused for another reason (expired, not yet valid, revoked, wrong usage, ...).
    OtherCertificate,
    /// What came back was not TLS: the port is probably not the server's TLS port.
    NotTls,
}

/// The rustls error somewhere in `error`'s chain (the database and Redis clients wrap
/// it in an `io::Error`, whose `source()` skips it, so the wrapped error is looked at too).
pub(crate) fn rustls_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            let inner: &(dyn Error + 'static) = inner;
            if let Some(found) = rustls_error(inner) {
                return Some(found);
            }
        }
        // The redis crate's `source()` is the `Arc` it keeps the cause in.
        if let Some(shared) = e.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
            let inner: &(dyn Error + 'static) = &**shared;
            if let Some(found) = rustls_error(inner) {
                return Some(found);
            }
        }
        current = e.source();
    }
    None
}

/// The TLS problem behind `error`, if a TLS handshake is what failed.
pub(crate) fn tls_problem(error: &(dyn Error + 'static)) -> Option<TlsProblem> {
    Some(match rustls_error(error)? {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                TlsProblem::Untrusted
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsProblem::WrongName
            }
            _ => TlsProblem::OtherCertificate,
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            TlsProblem::NotTls
        }
        _ => return None,
    })
}

/// How a CA file setting reads in a hint: its path, or that only Mozilla's roots are
/// trusted when it is empty.
pub(crate) fn ca_file_text(path: &str) -> String {
    if path.is_empty() {
        "now empty: Mozilla's roots only".to_owned()
    } else {
        format!("now `{path}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(Arc<dyn Error + Send + Sync>);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_certificate_error_is_found_inside_an_io_error() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(tls_problem(&io), Some(TlsProblem::Untrusted));
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        );
        assert_eq!(tls_problem(&io), Some(TlsProblem::WrongName));
        // As the redis crate keeps it.
        let shared: Arc<dyn Error + Send + Sync> = Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        ));
        let wrapper = Wrapper(shared);
        assert_eq!(tls_problem(&wrapper), Some(TlsProblem::Untrusted));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_problem(&plain), None);
    }
}
