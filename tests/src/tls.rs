//! TLS for the tests: a certificate authority of the test's own, a
//! TLS-terminating proxy in front of a plain server (the real RabbitMQ), and
//! the name the local PostgreSQL's own certificate is valid for.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName};
use tokio::{
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};

/// A directory of the test's own, removed when dropped.
pub struct TempDir {
    /// Where it is.
    pub path: PathBuf,
}

impl TempDir {
    /// A new, empty directory under the system's temporary directory.
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("e2e-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        Self { path }
    }

    /// Writes `contents` to `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.path.join(name);
        std::fs::write(&path, contents).expect("write a temporary file");
        path.to_str().expect("UTF-8 path").to_owned()
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key, both PEM.
pub struct ServerIdentity {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        Self { issuer }
    }

    /// The CA's certificate (PEM): what a client trusts.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate valid for `names`, signed by this CA.
    pub fn issue(&self, names: &[&str]) -> ServerIdentity {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        ServerIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A TLS endpoint on a free local port that forwards the decrypted bytes to
/// `127.0.0.1:upstream_port`: RabbitMQ as if it had a TLS listener.
pub struct TlsProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    handshakes: Arc<AtomicUsize>,
    accept: AbortHandle,
    links: Arc<std::sync::Mutex<Vec<AbortHandle>>>,
}

impl TlsProxy {
    /// Starts the endpoint with `identity` as its certificate.
    pub async fn start(upstream_port: u16, identity: &ServerIdentity) -> Self {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("server certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key PEM");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let links: Arc<std::sync::Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let handshakes = handshakes.clone();
            let links = links.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let handshakes = handshakes.clone();
                    let link = tokio::spawn(async move {
                        // A client that refuses the certificate ends here.
                        let Ok(mut client) = acceptor.accept(client).await else {
                            return;
                        };
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut server) =
                            TcpStream::connect(("127.0.0.1", upstream_port)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links.lock().expect("links").push(link.abort_handle());
                }
            })
            .abort_handle()
        };
        Self {
            port,
            handshakes,
            accept,
            links,
        }
    }

    /// TLS handshakes completed so far: connections that trusted the endpoint.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }
}

/// The local PostgreSQL's own certificate, and a host name it is valid for.
pub struct PostgresCertificate {
    /// The certificate file the server presents (`ssl_cert_file`); Debian's
    /// snakeoil certificate is self-signed, so it is its own root.
    pub path: String,
    /// `localhost` or the machine's host name, whichever the certificate names.
    pub host: String,
}

impl PostgresCertificate {
    /// Asks the server whether it speaks TLS and which certificate it
    /// presents; panics, saying why, when TLS is off or the certificate
    /// names neither `localhost` nor this machine.
    pub async fn of(pool: &sqlx::PgPool) -> Self {
        let ssl: String = sqlx::query_scalar("SHOW ssl")
            .fetch_one(pool)
            .await
            .expect("SHOW ssl");
        assert_eq!(ssl, "on", "the test PostgreSQL must have ssl = on");
        let path: String = sqlx::query_scalar("SHOW ssl_cert_file")
            .fetch_one(pool)
            .await
            .expect("SHOW ssl_cert_file");
        let path = if Path::new(&path).is_absolute() {
            path
        } else {
            let data: String = sqlx::query_scalar("SHOW data_directory")
                .fetch_one(pool)
                .await
                .expect("SHOW data_directory");
            format!("{data}/{path}")
        };
        let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let der = CertificateDer::pem_slice_iter(&pem)
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("{path} holds no PEM certificate"));
        let certificate = webpki::EndEntityCert::try_from(&der).expect("parse the certificate");
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let host = ["localhost".to_owned(), hostname]
            .into_iter()
            .find(|name| {
                ServerName::try_from(name.as_str())
                    .is_ok_and(|n| certificate.verify_is_valid_for_subject_name(&n).is_ok())
            })
            .unwrap_or_else(|| {
                panic!("{path} is valid for neither localhost nor this machine's host name")
            });
        Self { path, host }
    }
}
