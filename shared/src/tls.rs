//! What the TLS connections to PostgreSQL and RabbitMQ share: the trusted
//! roots (the system's, or one CA file) and a one-line account of why a
//! handshake failed.
//!
//! Both clients use rustls with the ring provider; a server certificate that
//! does not verify is a configuration error to report, not an outage to wait
//! out ([`certificate_refused`]).

use std::{error::Error as StdError, sync::Arc, sync::OnceLock};

use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer},
    CertificateError, RootCertStore,
};

/// Why a CA file gave no trusted root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaFileError {
    /// The file could not be read.
    #[error("cannot read CA file {path} ({reason})")]
    Unreadable {
        /// The file's path.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The file holds no PEM certificate that parses.
    #[error("CA file {path} holds no PEM certificate")]
    NoCertificate {
        /// The file's path.
        path: String,
    },
}

/// The roots in the PEM file at `path` (every certificate in it), and only those.
pub fn roots_from_file(path: &str) -> Result<RootCertStore, CaFileError> {
    let pem = std::fs::read(path).map_err(|e| CaFileError::Unreadable {
        path: path.to_owned(),
        reason: e.kind().to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots
        .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
    if added == 0 {
        return Err(CaFileError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// The operating system's trusted roots (`/etc/ssl/certs` on Debian, or
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`), read once per process. Certificates that
/// do not parse are skipped; an empty store makes every handshake fail with
/// an unknown issuer, which names the problem.
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    errors = found.errors.len(),
                    "no system root certificate found: TLS servers will not verify"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// The rustls error somewhere in `error`'s chain, looking inside
/// `std::io::Error`s (both clients report handshake failures as I/O errors).
pub fn find_tls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next: Option<&'a (dyn StdError + 'static)> = Some(error);
    while let Some(current) = next {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = find_tls_error(inner) {
                    return Some(tls);
                }
            }
        }
        next = current.source();
    }
    None
}

/// Whether the server's certificate was refused: retrying cannot help until
/// the configuration (or the certificate) changes.
pub fn certificate_refused(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
    )
}

/// One line on a failed handshake; `roots` says what the certificate was
/// checked against (e.g. "sslrootcert /etc/ca.pem" or "the system roots").
pub fn describe(error: &rustls::Error, roots: &str) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "TLS: the server's certificate was not issued by a trusted CA (checked against {roots})"
        ),
        rustls::Error::InvalidCertificate(_) => {
            format!("TLS: the server's certificate was refused: {error}")
        }
        _ => format!("TLS: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_error_is_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let wrapped = std::io::Error::other(io);

        let found = find_tls_error(&wrapped).expect("found");

        assert!(certificate_refused(found));
        assert_eq!(
            describe(found, "cacertfile /ca.pem"),
            "TLS: the server's certificate was not issued by a trusted CA (checked against cacertfile /ca.pem)"
        );
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let missing = roots_from_file("/nonexistent/ca.pem").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "cannot read CA file /nonexistent/ca.pem (entity not found)"
        );
        let empty = std::env::temp_dir().join(format!("empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = roots_from_file(empty.to_str().unwrap()).unwrap_err();
        std::fs::remove_file(&empty).unwrap();
        assert!(
            matches!(error, CaFileError::NoCertificate { .. }),
            "{error}"
        );
    }
}
