//! A Pingora proxy with nothing of the gateway in it: a fixed round-robin over the backends given
//! on the command line, no routing, no metrics, no logging. `scripts/bench-overhead.sh` measures it
//! next to the gateway to separate Pingora's own per-request cost from the gateway's.
//!
//! `bare_proxy LISTEN_ADDR BACKEND...`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

struct Bare {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        Ok(Box::new(HttpPeer::new(
            self.backends[i],
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .expect("usage: bare_proxy LISTEN_ADDR BACKEND...");
    let backends: Vec<SocketAddr> = args
        .map(|a| a.parse().expect("a backend address"))
        .collect();
    assert!(!backends.is_empty(), "at least one backend");
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            backends,
            next: AtomicUsize::new(0),
        },
    );
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
