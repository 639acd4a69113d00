//! A TCP proxy in front of a real service, to cut it off from one service
//! under test without stopping it for the others running in parallel.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};

pub struct TcpProxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl TcpProxy {
    /// Listens on a free local port and forwards to `127.0.0.1:upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        Self::start_at("127.0.0.1", upstream_port).await
    }

    /// Listens on a free port of the (local) address `host` resolves to (its
    /// first IPv4 one) and forwards to `127.0.0.1:upstream_port`: a server
    /// that listens on 127.0.0.1 only, reached under a name of the machine.
    pub async fn start_at(host: &str, upstream_port: u16) -> Self {
        let address = tokio::net::lookup_host((host, 0))
            .await
            .expect("resolve the proxy's host")
            .find(std::net::SocketAddr::is_ipv4)
            .unwrap_or_else(|| panic!("{host} has no IPv4 address"));
        let listener = TcpListener::bind(address).await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = {
            let open = open.clone();
            let links = links.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !open.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let link = tokio::spawn(async move {
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
            open,
            links,
            accept,
        }
    }

    /// Closes every open connection and refuses new ones: an outage.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    /// Accepts connections again: the service is back.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
