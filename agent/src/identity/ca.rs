//! The host's small certificate authority: X.509 client certificates for
//! registered identities, checked by the HTTP endpoint's TLS listener
//! (`mcpwarden run --listen ADDR --tls`).
//!
//! Files live in `<state>/ca/`: `ca.crt` and `ca.key` (the CA, ECDSA P-256,
//! ten years), `server.crt` and `server.key` (the endpoint's own
//! certificate, for `localhost`, loopback and the host name). Keys are
//! written 0600 and never overwritten by accident. Each client certificate
//! belongs to one registered identity (its common name is the identity's
//! name) and is recorded in the store's `certs` tree under the SHA-256 of
//! its DER: the TLS handshake proves the client holds a certificate this CA
//! signed, and the store says which identity it is and whether it, or its
//! identity, was revoked since. So revocation takes effect at once for new
//! checks, without reloading the listener; `mcpwarden ca crl` still writes
//! a signed CRL for other TLS terminators. Issuing and revoking are
//! audited.
use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{AuthError, Identity, store as identities};
use crate::store::{Db, StoreError, audit, sha256_hex, unix_now};

/// The CA's directory under the state directory.
pub const CA_DIR: &str = "ca";
const CERTS: &str = "certs";
const META: &str = "ca";
/// The CA certificate's lifetime: ten years.
const CA_TTL: u64 = 10 * 365 * 86_400;
/// The endpoint certificate's lifetime: one year (`ca server` renews it).
const SERVER_TTL: u64 = 365 * 86_400;

/// Where the CA's files are.
#[derive(Clone, Debug)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    #[must_use]
    pub fn new(state: &Path) -> Self {
        Self {
            dir: state.join(CA_DIR),
        }
    }
    #[must_use]
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    #[must_use]
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    #[must_use]
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    #[must_use]
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

/// A client certificate the CA issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// SHA-256 of the certificate's DER, hex: how the listener finds it.
    pub fingerprint: String,
    /// The serial number, hex (what a CRL names).
    pub serial: String,
    /// The identity it proves, and that identity's token id.
    pub identity: String,
    #[serde(with = "super::hex_u64")]
    pub identity_id: u64,
    /// Unix seconds.
    pub issued: u64,
    pub not_after: u64,
    pub revoked: Option<u64>,
}

/// What the store keeps about the CA itself.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    common_name: String,
    created: u64,
    /// The last CRL's number (CRL numbers only grow).
    crl_number: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("no CA in {0}: create one with `mcpwarden ca init`")]
    Missing(String),
    #[error("a CA already exists in {0}; it is never replaced by accident")]
    Exists(String),
    #[error("no live identity named {0:?}: register it first (`mcpwarden agent register {0}`)")]
    NoIdentity(String),
    #[error("no certificate matches {0:?} (see `mcpwarden ca list`)")]
    NoCertificate(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn file_error(path: &Path, e: &impl std::fmt::Display) -> CaError {
    CaError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes `bytes` to `path` with `mode`. A new file is created exclusively
/// unless `replace`, in which case it goes through a temporary file and a
/// rename (never a half-written key).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), CaError> {
    let target = if replace {
        path.with_extension("tmp")
    } else {
        path.to_path_buf()
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(!replace)
        .create(replace)
        .truncate(replace)
        .mode(mode)
        .open(&target)
        .map_err(|e| file_error(path, &e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| file_error(path, &e))?;
    if replace {
        std::fs::rename(&target, path).map_err(|e| file_error(path, &e))?;
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| file_error(path, &e))
}

fn at(unix: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A random positive 16-byte serial.
fn random_serial() -> Result<Vec<u8>, CaError> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| CaError::File {
        path: "getrandom".into(),
        message: e.to_string(),
    })?;
    s[0] = (s[0] & 0x7f) | 0x01;
    Ok(s.to_vec())
}

/// The CA's parameters: the same at `init` and every later signature (an
/// issuer is its name, key usages and key identifier method).
fn ca_params(common_name: &str, now: u64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "mcpwarden");
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = at(now.saturating_sub(60));
    p.not_after = at(now.saturating_add(CA_TTL));
    p
}

fn meta(db: &Db) -> Result<Option<Meta>, CaError> {
    Ok(db.get(&db.tree(META)?, "meta")?)
}

/// The CA, ready to sign.
fn issuer(db: &Db, paths: &Paths) -> Result<(Issuer<'static, KeyPair>, Meta), CaError> {
    let meta = meta(db)?.ok_or_else(|| CaError::Missing(paths.dir.display().to_string()))?;
    let key = KeyPair::from_pem(&read_text(&paths.ca_key())?)?;
    Ok((Issuer::new(ca_params(&meta.common_name, 0), key), meta))
}

/// The names the endpoint certificate is for by default: `localhost`,
/// both loopback addresses and the host name.
#[must_use]
pub fn default_server_names() -> Vec<String> {
    let mut names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = nix::unistd::gethostname()
        && let Some(h) = h.to_str()
        && !h.is_empty()
        && h != "localhost"
    {
        names.push(h.to_owned());
    }
    names
}

/// Creates the CA (and the endpoint's certificate for `server_names`).
pub fn init(
    db: &Db,
    actor: &audit::Actor,
    paths: &Paths,
    common_name: &str,
    server_names: &[String],
) -> Result<(), CaError> {
    if meta(db)?.is_some() || paths.ca_key().exists() {
        return Err(CaError::Exists(paths.dir.display().to_string()));
    }
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&paths.dir)
            .map_err(|e| file_error(&paths.dir, &e))?;
    }
    let now = unix_now();
    let key = KeyPair::generate()?;
    let mut params = ca_params(common_name, now);
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    let cert = params.self_signed(&key)?;
    write_file(
        &paths.ca_key(),
        key.serialize_pem().as_bytes(),
        0o600,
        false,
    )?;
    write_file(&paths.ca_cert(), cert.pem().as_bytes(), 0o644, false)?;
    db.put(
        &db.tree(META)?,
        "meta",
        &Meta {
            common_name: common_name.to_owned(),
            created: now,
            crl_number: 0,
        },
    )?;
    audit::append(
        db,
        actor.clone(),
        "ca.init",
        common_name,
        json!({ "fingerprint": sha256_hex(cert.der()) }),
    )?;
    issue_server(db, actor, paths, server_names)
}

/// (Re)issues the endpoint's certificate for `names` (DNS names or IP
/// addresses).
pub fn issue_server(
    db: &Db,
    actor: &audit::Actor,
    paths: &Paths,
    names: &[String],
) -> Result<(), CaError> {
    let (issuer, _) = issuer(db, paths)?;
    let now = unix_now();
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("mcpwarden", String::as_str),
    );
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = at(now.saturating_sub(60));
    params.not_after = at(now.saturating_add(SERVER_TTL));
    let cert = params.signed_by(&key, &issuer)?;
    write_file(
        &paths.server_key(),
        key.serialize_pem().as_bytes(),
        0o600,
        true,
    )?;
    write_file(&paths.server_cert(), cert.pem().as_bytes(), 0o644, true)?;
    audit::append(
        db,
        actor.clone(),
        "ca.server",
        &names.join(","),
        json!({ "fingerprint": sha256_hex(cert.der()) }),
    )?;
    Ok(())
}

/// A client certificate and its key, as issued (PEM).
#[derive(Debug)]
pub struct Issued {
    pub record: CertRecord,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Issues a client certificate for the live identity `name`, valid for
/// `ttl` seconds but never beyond the identity's own expiry.
pub fn issue(
    db: &Db,
    actor: &audit::Actor,
    paths: &Paths,
    name: &str,
    ttl: Option<u64>,
) -> Result<Issued, CaError> {
    let now = unix_now();
    let identity = identities::by_name(db, name)?
        .filter(|i| i.live(now).is_ok())
        .ok_or_else(|| CaError::NoIdentity(name.to_owned()))?;
    let (issuer, _) = issuer(db, paths)?;
    let mut not_after = now.saturating_add(ttl.unwrap_or(CA_TTL));
    if let Some(e) = identity.expires {
        not_after = not_after.min(e);
    }
    let key = KeyPair::generate()?;
    let serial = random_serial()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "mcpwarden agents");
    params.distinguished_name.push(DnType::CommonName, name);
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = at(now.saturating_sub(60));
    params.not_after = at(not_after);
    let cert = params.signed_by(&key, &issuer)?;
    let record = CertRecord {
        fingerprint: sha256_hex(cert.der()),
        serial: crate::store::hex(&serial),
        identity: name.to_owned(),
        identity_id: identity.id,
        issued: now,
        not_after,
        revoked: None,
    };
    db.put(&db.tree(CERTS)?, &record.fingerprint, &record)?;
    audit::append(
        db,
        actor.clone(),
        "cert.issue",
        name,
        json!({
            "serial": record.serial,
            "fingerprint": record.fingerprint,
            "not_after": not_after,
        }),
    )?;
    Ok(Issued {
        record,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Every client certificate issued, oldest first.
pub fn list(db: &Db) -> Result<Vec<CertRecord>, CaError> {
    let tree = db.tree(CERTS)?;
    let mut out = Vec::new();
    for item in &tree {
        let (_, raw) = item.map_err(|e| db.io(&e))?;
        out.push(serde_json::from_slice::<CertRecord>(&raw).map_err(|e| db.io(&e))?);
    }
    out.sort_by(|a, b| a.issued.cmp(&b.issued).then(a.serial.cmp(&b.serial)));
    Ok(out)
}

/// Revokes the certificates `what` names: a serial, a fingerprint, or an
/// identity (all its certificates). Returns those newly revoked.
pub fn revoke(db: &Db, actor: &audit::Actor, what: &str) -> Result<Vec<CertRecord>, CaError> {
    let what = what.trim().to_ascii_lowercase();
    let all = list(db)?;
    let matching: Vec<CertRecord> = all
        .into_iter()
        .filter(|c| c.serial == what || c.fingerprint == what || c.identity == what)
        .collect();
    if matching.is_empty() {
        return Err(CaError::NoCertificate(what));
    }
    let now = unix_now();
    let tree = db.tree(CERTS)?;
    let mut done = Vec::new();
    for mut c in matching.into_iter().filter(|c| c.revoked.is_none()) {
        c.revoked = Some(now);
        db.put(&tree, &c.fingerprint, &c)?;
        audit::append(
            db,
            actor.clone(),
            "cert.revoke",
            &c.identity,
            json!({ "serial": c.serial, "fingerprint": c.fingerprint }),
        )?;
        done.push(c);
    }
    Ok(done)
}

/// A CRL (PEM) of every revoked certificate, signed by the CA, valid for
/// `valid` seconds. Each CRL gets the next CRL number.
pub fn crl(db: &Db, paths: &Paths, valid: u64) -> Result<String, CaError> {
    let (issuer, mut meta) = issuer(db, paths)?;
    let now = unix_now();
    let revoked = list(db)?
        .into_iter()
        .filter_map(|c| {
            let when = c.revoked?;
            let serial = (0..c.serial.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(c.serial.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: at(when),
                reason_code: Some(RevocationReason::Unspecified),
                invalidity_date: None,
            })
        })
        .collect();
    meta.crl_number += 1;
    let params = CertificateRevocationListParams {
        this_update: at(now),
        next_update: at(now.saturating_add(valid.max(1))),
        crl_number: SerialNumber::from_slice(&meta.crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let pem = params.signed_by(&issuer)?.pem()?;
    db.put(&db.tree(META)?, "meta", &meta)?;
    Ok(pem)
}

/// The identity the client certificate with this fingerprint proves now.
/// The outer error is the store's, the inner one the certificate's.
pub fn authenticate(db: &Db, fingerprint: &str) -> Result<Result<Identity, AuthError>, StoreError> {
    let Some(cert) = db.get::<CertRecord>(&db.tree(CERTS)?, fingerprint)? else {
        return Ok(Err(AuthError::UnknownCertificate));
    };
    let now = unix_now();
    if cert.revoked.is_some() {
        return Ok(Err(AuthError::CertificateRevoked {
            name: cert.identity,
            serial: cert.serial,
        }));
    }
    if now >= cert.not_after {
        return Ok(Err(AuthError::CertificateExpired {
            name: cert.identity,
            serial: cert.serial,
        }));
    }
    let Some(identity) = identities::by_id(db, cert.identity_id)? else {
        return Ok(Err(AuthError::UnknownCertificate));
    };
    Ok(identity.live(now).map(|()| identity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        identity::Sybil,
        store::audit::{Verdict, verify},
    };

    fn me() -> audit::Actor {
        audit::Actor {
            uid: Some(0),
            name: String::new(),
        }
    }

    #[test]
    fn issue_authenticate_revoke_and_crl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).expect("open");
        let paths = Paths::new(dir.path());
        assert!(matches!(
            issue(&db, &me(), &paths, "bot", None),
            Err(CaError::NoIdentity(_))
        ));
        identities::register(
            &db,
            &me(),
            "bot",
            vec!["r".into()],
            Some(3600),
            None,
            Sybil::default(),
        )
        .expect("register");
        assert!(matches!(
            issue(&db, &me(), &paths, "bot", None),
            Err(CaError::Missing(_))
        ));
        init(&db, &me(), &paths, "test CA", &default_server_names()).expect("init");
        assert!(matches!(
            init(&db, &me(), &paths, "again", &[]),
            Err(CaError::Exists(_))
        ));
        let mode = |p: PathBuf| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
        };
        assert_eq!(mode(paths.ca_key()), 0o600);
        assert_eq!(mode(paths.server_key()), 0o600);

        let issued = issue(&db, &me(), &paths, "bot", None).expect("issue");
        // Capped by the identity's own expiry.
        assert!(issued.record.not_after <= unix_now() + 3600);
        assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let who = authenticate(&db, &issued.record.fingerprint)
            .expect("store")
            .expect("valid");
        assert_eq!(who.name, "bot");
        assert_eq!(
            authenticate(&db, &"0".repeat(64)).expect("store"),
            Err(AuthError::UnknownCertificate)
        );

        let second = issue(&db, &me(), &paths, "bot", None).expect("second");
        let revoked = revoke(&db, &me(), &issued.record.serial).expect("revoke");
        assert_eq!(revoked.len(), 1);
        assert!(matches!(
            authenticate(&db, &issued.record.fingerprint).expect("store"),
            Err(AuthError::CertificateRevoked { .. })
        ));
        assert!(
            authenticate(&db, &second.record.fingerprint)
                .expect("store")
                .is_ok()
        );
        // Revoking the identity ends its certificates too.
        identities::revoke(&db, &me(), "bot").expect("revoke identity");
        assert!(matches!(
            authenticate(&db, &second.record.fingerprint).expect("store"),
            Err(AuthError::Revoked { .. })
        ));
        assert!(matches!(
            revoke(&db, &me(), "nobody"),
            Err(CaError::NoCertificate(_))
        ));

        let crl1 = crl(&db, &paths, 86_400).expect("crl");
        let crl2 = crl(&db, &paths, 86_400).expect("crl");
        assert!(crl1.starts_with("-----BEGIN X509 CRL-----"));
        assert_ne!(crl1, crl2, "each CRL has its own number");
        assert!(matches!(
            verify(&db).expect("verify"),
            Verdict::Intact { .. }
        ));
        let actions: Vec<String> = audit::tail(&db, 20)
            .expect("tail")
            .into_iter()
            .map(|r| r.action)
            .collect();
        for a in ["ca.init", "ca.server", "cert.issue", "cert.revoke"] {
            assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
        }
    }
}
