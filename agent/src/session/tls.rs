//! The endpoint's listener: plain TCP, or TLS with optional client
//! certificates from the host's CA ([`crate::identity::ca`]).
//!
//! With `--tls` the endpoint serves `https://ADDR/mcp` with the CA's
//! endpoint certificate (or the operator's own, `--tls-cert`/`--tls-key`)
//! and asks every client for a certificate. A certificate that does not
//! chain to the host's CA, or is out of its validity, fails the handshake;
//! a client without one may still prove itself with an API token. Which
//! identity a valid certificate proves, and whether it was revoked since,
//! the store says at each request ([`super::identity::Auth`]), keyed by the
//! SHA-256 of the certificate the handshake verified.
//!
//! Handshakes run concurrently off the accept loop (a slow client cannot
//! hold the door), at most [`MAX_HANDSHAKES`] at a time and each for at
//! most [`HANDSHAKE_TIMEOUT`].
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{extract::connect_info::Connected, serve::IncomingStream};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;

use crate::identity::ca::Paths;

/// Handshakes in progress at most; beyond, new connections wait in the
/// kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// How long a client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the endpoint's certificate and key come from.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// Certificate chain (PEM); default: the CA's endpoint certificate.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM); default: the CA's endpoint key.
    pub key: Option<PathBuf>,
}

/// What the endpoint knows of a client's connection.
#[derive(Clone, Debug)]
pub(crate) struct ClientConn {
    pub addr: SocketAddr,
    /// SHA-256 (hex) of the client certificate the handshake verified.
    pub cert: Option<String>,
}

impl Connected<IncomingStream<'_, Incoming>> for ClientConn {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A byte stream to a client, plain or TLS.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The endpoint's TLS set-up, from the CA in `state` and `files`.
pub(crate) fn acceptor(state: &Path, files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let paths = Paths::new(state);
    let ca = paths.ca_cert();
    if !ca.exists() {
        return Err(format!(
            "--tls needs the host's CA to check client certificates, and {} does not exist: \
             create it with `mcpwarden ca init`",
            ca.display()
        ));
    }
    let cert = files.cert.clone().unwrap_or_else(|| paths.server_cert());
    let key = files.key.clone().unwrap_or_else(|| paths.server_key());
    config(&ca, &cert, &key).map(|c| TlsAcceptor::from(Arc::new(c)))
}

fn config(ca: &Path, cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let read_certs = |p: &Path| {
        CertificateDer::pem_file_iter(p)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client certificate verifier: {e}"))?;
    let chain = read_certs(cert)?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

type Accepted = (Box<dyn Stream>, ClientConn);

/// The endpoint's listener.
pub(crate) struct Incoming {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    handshakes: JoinSet<Option<Accepted>>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    pub fn new(tcp: TcpListener, tls: Option<TlsAcceptor>) -> Self {
        Self {
            tcp,
            tls,
            handshakes: JoinSet::new(),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
) -> Option<Accepted> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(<[_]>::first)
                .map(|c| crate::store::sha256_hex(c));
            Some((Box::new(tls), ClientConn { addr, cert }))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // A port probe, or a client that gave up: nothing to refuse.
            tracing::debug!(%addr, "TLS client left during the handshake: {e}");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(%addr, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(%addr, "TLS handshake timed out");
            None
        }
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Box<dyn Stream>;
    type Addr = ClientConn;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let room = self.handshakes.len() < MAX_HANDSHAKES;
            tokio::select! {
                r = self.tcp.accept(), if room => match r {
                    Ok((tcp, addr)) => {
                        // Answers are small writes that must leave at once:
                        // without TCP_NODELAY, Nagle holds an SSE event
                        // behind its headers until the client's delayed ACK.
                        if let Err(e) = tcp.set_nodelay(true) {
                            tracing::debug!("cannot set TCP_NODELAY on a client connection: {e}");
                        }
                        match &self.tls {
                            None => return (Box::new(tcp), ClientConn { addr, cert: None }),
                            Some(acceptor) => {
                                self.handshakes.spawn(handshake(acceptor.clone(), tcp, addr));
                            }
                        }
                    }
                    Err(e) => {
                        // Out of descriptors, most likely: wait for some to
                        // close rather than spin.
                        tracing::error!("cannot accept a client connection: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(accepted)) = done {
                        return accepted;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ClientConn {
            addr: self.tcp.local_addr()?,
            cert: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        identity::{Sybil, ca, store as identities},
        store::{Db, audit::Actor},
    };
    use rustls::{ClientConfig, ClientConnection, ServerConnection};

    fn client_config(ca_pem: &Path, cert_key: Option<(&str, &str)>) -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca_pem).expect("ca") {
            roots.add(c.expect("cert")).expect("add");
        }
        let b = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        match cert_key {
            None => b.with_no_client_auth(),
            Some((cert, key)) => b
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .expect("chain"),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
                )
                .expect("client auth"),
        }
    }

    /// Runs a handshake in memory; the fingerprint the server saw, or the
    /// error that ended it.
    fn handshake(server: &ServerConfig, client: ClientConfig) -> Result<Option<String>, String> {
        let mut s = ServerConnection::new(Arc::new(server.clone())).expect("server");
        let mut c = ClientConnection::new(Arc::new(client), "localhost".try_into().expect("name"))
            .expect("client");
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).expect("client write");
            s.read_tls(&mut buf.as_slice()).expect("server read");
            s.process_new_packets().map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).expect("server write");
            c.read_tls(&mut buf.as_slice()).expect("client read");
            c.process_new_packets().map_err(|e| e.to_string())?;
            if !s.is_handshaking() && !c.is_handshaking() {
                return Ok(s
                    .peer_certificates()
                    .and_then(<[_]>::first)
                    .map(|d| crate::store::sha256_hex(d)));
            }
        }
        Err("the handshake did not finish".into())
    }

    #[test]
    fn only_certificates_of_the_hosts_ca_pass_the_handshake() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        let me = Actor::current();
        let (db, paths) = (Db::open(dir.path()).expect("db"), Paths::new(dir.path()));
        let (odb, opaths) = (
            Db::open(other.path()).expect("db"),
            Paths::new(other.path()),
        );
        let names = ca::default_server_names();
        ca::init(&db, &me, &paths, "ours", &names).expect("init");
        ca::init(&odb, &me, &opaths, "theirs", &names).expect("init other");
        for (d, p) in [(&db, &paths), (&odb, &opaths)] {
            identities::register(d, &me, "bot", Vec::new(), None, None, Sybil::default())
                .expect("reg");
            let _ = p;
        }
        let ours = ca::issue(&db, &me, &paths, "bot", None).expect("issue");
        let theirs = ca::issue(&odb, &me, &opaths, "bot", None).expect("issue other");

        let server = config(&paths.ca_cert(), &paths.server_cert(), &paths.server_key())
            .expect("server config");
        let seen = handshake(
            &server,
            client_config(&paths.ca_cert(), Some((&ours.cert_pem, &ours.key_pem))),
        )
        .expect("our certificate passes");
        assert_eq!(seen.as_deref(), Some(ours.record.fingerprint.as_str()));
        // No certificate: the handshake passes, the client has proven nothing.
        assert_eq!(
            handshake(&server, client_config(&paths.ca_cert(), None)).expect("anonymous"),
            None
        );
        // Another CA's certificate fails the handshake.
        let refused = handshake(
            &server,
            client_config(&paths.ca_cert(), Some((&theirs.cert_pem, &theirs.key_pem))),
        );
        assert!(refused.is_err(), "{refused:?}");
        // The client refuses an endpoint its CA did not sign.
        let wrong_server = handshake(
            &server,
            client_config(&opaths.ca_cert(), Some((&ours.cert_pem, &ours.key_pem))),
        );
        assert!(wrong_server.is_err(), "{wrong_server:?}");
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Err(e) = acceptor(dir.path(), &TlsFiles::default()) else {
            panic!("a TLS set-up without a CA");
        };
        assert!(e.contains("mcpwarden ca init"), "{e}");
        let paths = Paths::new(dir.path());
        let db = Db::open(dir.path()).expect("db");
        ca::init(&db, &Actor::current(), &paths, "ca", &["localhost".into()]).expect("init");
        let Err(e) = acceptor(
            dir.path(),
            &TlsFiles {
                cert: Some(dir.path().join("nope.crt")),
                key: None,
            },
        ) else {
            panic!("a TLS set-up without its certificate");
        };
        assert!(e.contains("nope.crt"), "{e}");
    }
}
