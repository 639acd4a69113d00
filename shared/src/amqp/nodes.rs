//! `AMQP_URL`: one broker node, or the nodes of one cluster separated by
//! commas, each `amqp://` or `amqps://`; and a connection to the first node
//! that answers.
//!
//! `amqps://` verifies the server's certificate and host name against the
//! system roots, or against the CA file named by RabbitMQ's URI query
//! parameter `cacertfile` (then only that CA). `server_name_indication`
//! names the host the certificate must be valid for, when it is not the
//! URL's host. Every connection (first or again after a loss) tries the nodes
//! in their listed order, so a service moves to the next node when one fails.

use std::{net::SocketAddr, sync::Arc};

use lapin::{uri::AMQPUri, AsyncTcpStream, Connection, ConnectionProperties};
use rustls::{ClientConfig, RootCertStore};

use super::{AmqpError, NodeFailure, CONNECT_TIMEOUT};
use crate::{secret::redact_url, tls};

/// The nodes of `AMQP_URL`, in order. Holds credentials: not `Debug`.
pub struct Nodes {
    nodes: Vec<Node>,
}

/// One node: where it is and how to speak TLS to it.
struct Node {
    uri: AMQPUri,
    /// The URL with its password hidden, for logs and errors.
    shown: String,
    tls: Option<Tls>,
}

#[derive(Clone)]
struct Tls {
    config: Arc<ClientConfig>,
    /// The name the certificate must be valid for.
    server_name: String,
    /// What the certificate is checked against, for error messages.
    roots: String,
}

/// RabbitMQ's TLS query parameters this client understands.
const CACERTFILE: &str = "cacertfile";
const SERVER_NAME: &str = "server_name_indication";
const VERIFY: &str = "verify";
/// Client certificates: not supported; refused rather than ignored.
const CLIENT_CERTIFICATE: [&str; 2] = ["certfile", "keyfile"];

impl Nodes {
    /// Parses `AMQP_URL`: URLs separated by commas (a comma inside a
    /// password must be percent-encoded, like `/`, `?` and `#`). Reads each
    /// `cacertfile`. Nothing of a URL that does not parse is shown.
    pub fn parse(list: &str) -> Result<Self, AmqpError> {
        let nodes = list
            .split(',')
            .map(str::trim)
            .map(Node::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { nodes })
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no node (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Connects to the first node that answers, trying each in order, each
    /// for at most [`CONNECT_TIMEOUT`]. The connection is named `name` in
    /// the broker's management view.
    pub async fn connect(&self, name: &str) -> Result<Connection, AmqpError> {
        let mut failures = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            match node.connect(name).await {
                Ok(connection) => {
                    if self.nodes.len() > 1 {
                        tracing::info!(node = %node.shown, skipped = failures.len(), "connected to RabbitMQ node");
                    }
                    return Ok(connection);
                }
                Err(failure) => {
                    if index + 1 < self.nodes.len() {
                        tracing::warn!(node = %failure.node, reason = %failure.reason, "RabbitMQ node did not answer; trying the next");
                    }
                    failures.push(failure);
                }
            }
        }
        Err(AmqpError::Unreachable { failures })
    }
}

impl Node {
    fn parse(url: &str) -> Result<Self, AmqpError> {
        let parsed = match url::Url::parse(url) {
            Ok(parsed)
                if matches!(parsed.scheme(), "amqp" | "amqps")
                    && parsed.has_host()
                    && !parsed.cannot_be_a_base() =>
            {
                parsed
            }
            _ => return Err(AmqpError::InvalidUrl),
        };
        // The broker client's own parser quotes the URL in its errors.
        let uri: AMQPUri = url.parse().map_err(|_| AmqpError::InvalidUrl)?;
        let shown = redact_url(url);
        let tls = tls_settings(&parsed, &uri, &shown)?;
        Ok(Self { uri, shown, tls })
    }

    async fn connect(&self, name: &str) -> Result<Connection, NodeFailure> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let failure = |reason: String, permanent: bool| NodeFailure {
            node: self.shown.clone(),
            reason,
            permanent,
        };
        let runtime = lapin::runtime::default_runtime()
            .map_err(|error| failure(format!("no async runtime: {error}"), true))?;
        let tls = self.tls.clone();
        let connecting = Connection::connector(
            self.uri.clone(),
            runtime,
            async move |uri: AMQPUri, runtime| {
                let host = uri.authority.host.as_str();
                let addresses: Vec<SocketAddr> =
                    tokio::net::lookup_host((host, uri.authority.port))
                        .await?
                        .collect();
                let stream = AsyncTcpStream::connect(&runtime, addresses).await?;
                Ok(match &tls {
                    None => stream,
                    Some(tls) => {
                        let connector = lapin::tcp::RustlsConnector::from(tls.config.clone());
                        stream.into_rustls(&connector, &tls.server_name).await?
                    }
                })
            },
            properties,
        );
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(match tls::find_tls_error(&error) {
                Some(refused) => failure(
                    tls::describe(
                        refused,
                        self.tls.as_ref().map_or("the system roots", |t| &t.roots),
                    ),
                    tls::certificate_refused(refused),
                ),
                None => failure(format!("is unreachable: {error}"), false),
            }),
            Err(_) => Err(failure(
                format!("did not answer within {CONNECT_TIMEOUT:?}"),
                false,
            )),
        }
    }
}

/// The TLS settings of an `amqps://` node from its query parameters; `None`
/// for `amqp://`, which must not carry any.
fn tls_settings(parsed: &url::Url, uri: &AMQPUri, shown: &str) -> Result<Option<Tls>, AmqpError> {
    let refuse = |problem: String| AmqpError::TlsSetting {
        node: shown.to_owned(),
        problem,
    };
    let mut ca_file = None;
    let mut server_name = None;
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            CACERTFILE => ca_file = Some(value.into_owned()),
            SERVER_NAME => server_name = Some(value.into_owned()),
            VERIFY if value == "verify_peer" => {}
            VERIFY => {
                return Err(refuse(format!(
                    "verify={value} is not supported: amqps:// always verifies the server"
                )))
            }
            key if CLIENT_CERTIFICATE.contains(&key) => {
                return Err(refuse(format!(
                    "{key} (a client certificate) is not supported"
                )))
            }
            _ => {}
        }
    }
    if parsed.scheme() == "amqp" {
        if ca_file.is_some() || server_name.is_some() {
            return Err(refuse(
                "cacertfile and server_name_indication need amqps:// (TLS)".to_owned(),
            ));
        }
        return Ok(None);
    }
    let (roots, described) = match &ca_file {
        Some(path) => (
            Arc::new(tls::roots_from_file(path).map_err(|e| refuse(e.to_string()))?),
            format!("cacertfile {path}"),
        ),
        None => (tls::system_roots(), "the system roots".to_owned()),
    };
    Ok(Some(Tls {
        config: client_config(roots).map_err(|e| refuse(format!("TLS set-up: {e}")))?,
        server_name: server_name.unwrap_or_else(|| uri.authority.host.clone()),
        roots: described,
    }))
}

fn client_config(roots: Arc<RootCertStore>) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_on_commas_and_each_node_checked() {
        let nodes =
            Nodes::parse("amqp://guest:pw@a:5672/%2f, amqps://b/%2f ,amqp://c:5673/%2f").unwrap();
        assert_eq!(nodes.len(), 3);
        assert!(nodes.nodes[1].tls.is_some());
        assert_eq!(nodes.nodes[1].tls.as_ref().unwrap().server_name, "b");
        assert_eq!(nodes.nodes[0].shown, "amqp://guest:***@a:5672/%2f");

        for list in [
            "amqp://a/%2f,",
            "amqp://a/%2f,,amqp://b/%2f",
            "amqp://guest:pa,ss@a/%2f",
        ] {
            assert!(
                matches!(Nodes::parse(list), Err(AmqpError::InvalidUrl)),
                "{list}"
            );
        }
    }

    #[test]
    fn tls_parameters_belong_to_amqps_and_unsupported_ones_are_refused() {
        let refused = |url: &str| match Nodes::parse(url) {
            Err(error @ AmqpError::TlsSetting { .. }) => error.to_string(),
            other => panic!("{url}: {:?}", other.map(|n| n.len())),
        };
        assert!(refused("amqp://guest:pw@a/%2f?cacertfile=/ca.pem").contains("need amqps://"));
        assert!(refused("amqps://a/%2f?verify=verify_none").contains("verify=verify_none"));
        assert!(refused("amqps://a/%2f?certfile=/c.pem&keyfile=/k.pem").contains("certfile"));
        let missing = refused("amqps://guest:hunter2@a/%2f?cacertfile=/nonexistent/ca.pem");
        assert_eq!(
            missing,
            "AMQP_URL amqps://guest:***@a/%2f: cannot read CA file /nonexistent/ca.pem (entity not found)"
        );
        let named =
            Nodes::parse("amqps://10.0.0.7/%2f?server_name_indication=rabbit.internal").unwrap();
        assert_eq!(
            named.nodes[0].tls.as_ref().unwrap().server_name,
            "rabbit.internal"
        );
    }
}
