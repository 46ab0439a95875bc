//! Security (issue #16): listeners by security protocol, what a connection knows about who is
//! on the other end (its principal), and the settings of TLS, SASL and the authorizer.
//!
//! Modules (filled in by their parts of issue #16):
//! - listeners: `--listeners` / `--advertised-listeners` in Kafka's syntax (this file).
//! - TLS (rustls) on the shard's ring, kTLS where the kernel has it.
//! - SASL (PLAIN, SCRAM-SHA-256/512), the SCRAM credential store.
//! - ACLs: the authorizer each shard holds a copy of.

pub mod authorizer;
pub mod credentials;
pub mod sasl;
pub mod sasl_client;
pub mod scram;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Kafka's security protocols (`security.protocol`), the scheme of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub const ALL: [SecurityProtocol; 4] = [
        SecurityProtocol::Plaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::SaslSsl,
    ];

    /// Kafka's name (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`).
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Kafka's `SecurityProtocol.id` (DescribeCluster / Metadata do not carry it, but
    /// DescribeConfigs' `listener.security.protocol.map` is written with names).
    pub fn from_name(name: &str) -> Option<SecurityProtocol> {
        SecurityProtocol::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// Traffic is encrypted with TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Clients must authenticate with SASL before anything but ApiVersions and SASL is served.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl std::fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One listener (`NAME://host:port` in `--listeners`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// The listener's name: a security protocol's name, or a name mapped to one by
    /// `--listener-security-protocol-map` (Kafka's `listener.security.protocol.map`).
    pub name: String,
    pub protocol: SecurityProtocol,
    pub addr: SocketAddr,
    /// Host and port clients are told to connect to (`--advertised-listeners`); `None`: the
    /// bound address.
    pub advertised: Option<(String, u16)>,
}

impl ListenerConfig {
    /// A plaintext listener named `PLAINTEXT` on `addr` (the default, and `--listen`).
    pub fn plaintext(addr: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            name: SecurityProtocol::Plaintext.name().to_string(),
            protocol: SecurityProtocol::Plaintext,
            addr,
            advertised: None,
        }
    }
}

/// A listener as the shards serve it: its configuration, the address it is bound to (port 0
/// resolved) and the endpoint it advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// Its position in `BrokerConfig::listeners` (and `Shared::listeners`).
    pub index: usize,
    pub name: String,
    pub protocol: SecurityProtocol,
    pub bound: SocketAddr,
    pub advertised_host: String,
    pub advertised_port: u16,
}

/// Listeners a broker may have at most (each costs one socket per shard).
pub const LISTENERS_MAX: usize = 16;

/// Parses `--listeners` (`NAME://host:port,...`; host may be empty for all addresses, IPv6
/// in brackets). `map` is `--listener-security-protocol-map` (`NAME:PROTOCOL,...`): a name
/// not in it must be a protocol's own name.
pub fn parse_listeners(text: &str, map: Option<&str>) -> Result<Vec<ListenerConfig>, String> {
    let map = parse_protocol_map(map.unwrap_or(""))?;
    let mut listeners: Vec<ListenerConfig> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, rest) = item
            .split_once("://")
            .ok_or_else(|| format!("--listeners {item:?}: expected NAME://host:port"))?;
        let name = name.to_ascii_uppercase();
        let protocol = map
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, p)| p)
            .or_else(|| SecurityProtocol::from_name(&name))
            .ok_or_else(|| {
                format!(
                    "--listeners {item:?}: {name} is neither a security protocol (PLAINTEXT, \
                     SSL, SASL_PLAINTEXT, SASL_SSL) nor named in \
                     --listener-security-protocol-map"
                )
            })?;
        let addr = resolve_host_port(rest).map_err(|e| format!("--listeners {item:?}: {e}"))?;
        if listeners.iter().any(|l| l.name == name) {
            return Err(format!("--listeners: {name} is named twice"));
        }
        if listeners.iter().any(|l| l.addr == addr && addr.port() != 0) {
            return Err(format!("--listeners: two listeners on {addr}"));
        }
        listeners.push(ListenerConfig {
            name,
            protocol,
            addr,
            advertised: None,
        });
    }
    if listeners.is_empty() {
        return Err("--listeners names no listener".to_string());
    }
    if listeners.len() > LISTENERS_MAX {
        return Err(format!(
            "--listeners names {} listeners, more than {LISTENERS_MAX}",
            listeners.len()
        ));
    }
    Ok(listeners)
}

/// Applies `--advertised-listeners` (`NAME://host:port,...`) to `listeners`: every name must
/// be a listener's.
pub fn apply_advertised(listeners: &mut [ListenerConfig], text: &str) -> Result<(), String> {
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, rest) = item
            .split_once("://")
            .ok_or_else(|| format!("--advertised-listeners {item:?}: expected NAME://host:port"))?;
        let name = name.to_ascii_uppercase();
        let listener = listeners
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| {
                format!("--advertised-listeners {item:?}: no listener named {name} in --listeners")
            })?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("--advertised-listeners {item:?}: expected host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("--advertised-listeners {item:?}: bad port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("--advertised-listeners {item:?}: a host is needed"));
        }
        listener.advertised = Some((host.to_string(), port));
    }
    Ok(())
}

fn parse_protocol_map(text: &str) -> Result<Vec<(String, SecurityProtocol)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (name, protocol) = item.split_once(':').ok_or_else(|| {
                format!("--listener-security-protocol-map {item:?}: expected NAME:PROTOCOL")
            })?;
            let protocol = SecurityProtocol::from_name(protocol).ok_or_else(|| {
                format!("--listener-security-protocol-map {item:?}: unknown protocol {protocol}")
            })?;
            Ok((name.to_ascii_uppercase(), protocol))
        })
        .collect()
}

fn resolve_host_port(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_string())?;
    let port: u16 = port.parse().map_err(|_| "bad port".to_string())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))
}

/// PEM files of the broker's TLS identity (`--tls-cert-file`, `--tls-key-file`) and the CA
/// that client certificates must chain to (`--tls-client-ca-file`), with what the TLS
/// listeners ask of clients (`--tls-client-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// Kafka's `ssl.client.auth` for the client TLS listeners (`--tls-client-auth`); it needs
/// `--tls-client-ca-file` unless `None`. The quorum's links always authenticate both ends
/// when a client CA is given, whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every TLS client must present a certificate of the CA (the default with a CA).
    Required,
    /// A client may present one (checked against the CA: its subject becomes the principal)
    /// or none (`User:ANONYMOUS`, or its SASL identity).
    Requested,
    /// Client certificates are not asked for.
    None,
}

impl ClientAuth {
    pub fn from_name(name: &str) -> Option<ClientAuth> {
        match name {
            "required" => Some(ClientAuth::Required),
            "requested" => Some(ClientAuth::Requested),
            "none" => Some(ClientAuth::None),
            _ => None,
        }
    }
}

/// SASL mechanisms the broker offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub const ALL: [SaslMechanism; 3] = [
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
        SaslMechanism::Plain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<SaslMechanism> {
        SaslMechanism::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Default `--sasl-mechanisms`.
pub const SASL_MECHANISMS_DEFAULT: &str = "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN";
/// Default `--failed-authentication-delay-ms` (Kafka's
/// `connection.failed.authentication.delay.ms` is 100 ms).
pub const FAILED_AUTHENTICATION_DELAY_DEFAULT: Duration = Duration::from_millis(100);

/// The security settings of a broker (flags `--tls-*`, `--sasl-mechanisms`, `--super-users`,
/// `--authorizer`, ...). The default is what a broker without any of them does today: no
/// TLS, no SASL, everything allowed. Its Debug form (and so `BrokerConfig`'s) leaves the
/// inter-broker password out.
#[derive(Clone, PartialEq, Eq)]
pub struct SecurityConfig {
    /// Needed when any listener uses TLS.
    pub tls: Option<TlsFiles>,
    /// Offered on SASL listeners, in this order.
    pub sasl_mechanisms: Vec<SaslMechanism>,
    /// Principals (`User:name`) every operation is allowed to.
    pub super_users: Vec<String>,
    /// ACLs are enforced (Kafka's `authorizer.class.name` set). Off: everything is allowed
    /// and Create/Delete/DescribeAcls answer SECURITY_DISABLED.
    pub authorizer: bool,
    /// Kafka's `allow.everyone.if.no.acl.found` (only with the authorizer; default off).
    pub allow_everyone_if_no_acl_found: bool,
    /// Kafka's `connections.max.reauth.ms` (KIP-368): a SASL session expires after this and
    /// the client must re-authenticate; `None`: sessions do not expire.
    pub connections_max_reauth: Option<Duration>,
    /// Kafka's `connection.failed.authentication.delay.ms`: a failed authentication is
    /// answered this late (slows password guessing).
    pub failed_authentication_delay: Duration,
    /// The listener other brokers connect to (follower fetches); `None`: the first listener.
    pub inter_broker_listener: Option<String>,
    /// SASL identity this broker uses toward other brokers on a SASL inter-broker listener
    /// (mechanism, user, password).
    pub inter_broker_sasl: Option<(SaslMechanism, String, String)>,
    /// CA certificates other brokers' server certificates must chain to, for this broker's
    /// follower fetches over a TLS inter-broker listener (`--tls-ca-file`); `None`:
    /// `tls.client_ca`.
    pub inter_broker_tls_ca: Option<PathBuf>,
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inter_broker_sasl = self
            .inter_broker_sasl
            .as_ref()
            .map(|(mechanism, user, _password)| (mechanism, user, "<redacted>"));
        f.debug_struct("SecurityConfig")
            .field("tls", &self.tls)
            .field("sasl_mechanisms", &self.sasl_mechanisms)
            .field("super_users", &self.super_users)
            .field("authorizer", &self.authorizer)
            .field(
                "allow_everyone_if_no_acl_found",
                &self.allow_everyone_if_no_acl_found,
            )
            .field("connections_max_reauth", &self.connections_max_reauth)
            .field(
                "failed_authentication_delay",
                &self.failed_authentication_delay,
            )
            .field("inter_broker_listener", &self.inter_broker_listener)
            .field("inter_broker_sasl", &inter_broker_sasl)
            .field("inter_broker_tls_ca", &self.inter_broker_tls_ca)
            .finish()
    }
}

impl Default for SecurityConfig {
    fn default() -> SecurityConfig {
        SecurityConfig {
            tls: None,
            sasl_mechanisms: SaslMechanism::ALL.to_vec(),
            super_users: Vec::new(),
            authorizer: false,
            allow_everyone_if_no_acl_found: false,
            connections_max_reauth: None,
            failed_authentication_delay: FAILED_AUTHENTICATION_DELAY_DEFAULT,
            inter_broker_listener: None,
            inter_broker_sasl: None,
            inter_broker_tls_ca: None,
        }
    }
}

/// The name of the listener `conn` came in on (`None` where the shard knows no listeners,
/// e.g. unit tests).
pub fn listener_name<'a>(
    shared: &'a crate::shard::Shared,
    conn: &crate::connection::Conn,
) -> Option<&'a str> {
    shared.listeners.get(conn.listener).map(|l| l.name.as_str())
}

/// Kafka's principal of a connection nobody authenticated (PLAINTEXT, SSL without a client
/// certificate).
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// Kafka's `ResourceType` codes an ACL is bound to.
pub mod resource {
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
    /// The cluster resource's name.
    pub const CLUSTER_NAME: &str = "kafka-cluster";
}

/// Whether `conn`'s principal may perform `operation` (an [`crate::acl`] operation code) on
/// the resource `resource_type`/`name` ([`resource`] codes). Always true without
/// `--authorizer acl`. Costs no lock and no allocation (each shard holds its own copy of the
/// ACL table).
#[inline]
pub fn authorize(
    conn: &crate::connection::Conn,
    operation: u8,
    resource_type: i8,
    name: &str,
) -> bool {
    authorizer::authorize(conn, operation, resource_type, name)
}

/// The largest frame a SASL listener reads before the client has authenticated (Kafka's
/// `sasl.server.max.receive.size`, 512 KiB); a larger one closes the connection.
pub const SASL_FRAME_BYTES_MAX: usize = 512 * 1024;

/// The gate every request passes before its handler: on a SASL listener, a connection that
/// has not authenticated gets only ApiVersions, SaslHandshake and SaslAuthenticate (anything
/// else closes it, as Kafka does); one whose session expired (KIP-368) may only
/// re-authenticate. After a failed authentication (`Conn::auth_failed`) nothing is
/// served.
pub fn admit(
    req: &ringbroker_protocol::request::Request,
    conn: &crate::connection::Conn,
) -> Result<(), crate::api::Outcome> {
    use kafka_protocol::messages::ApiKey;
    if conn.auth_failed.get() {
        // A request pipelined behind a failed authentication: never served.
        return Err(crate::api::Outcome::Close(
            "request after a failed SASL authentication".to_string(),
        ));
    }
    let sasl_api = matches!(
        req.api,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    );
    if sasl_api {
        return Ok(());
    }
    if !conn.authenticated.get() {
        conn.auth_failed.set(true);
        crate::warn_limited!(peer = %conn.peer, api = ?req.api, "request before SASL authentication; closing");
        return Err(crate::api::Outcome::Close(format!(
            "{:?} before SASL authentication",
            req.api
        )));
    }
    if let Some(expiry) = conn.session_expiry.get() {
        if std::time::Instant::now() >= expiry {
            crate::warn_limited!(peer = %conn.peer, api = ?req.api, "SASL session expired without re-authentication; closing");
            return Err(crate::api::Outcome::Close(
                "SASL session expired (connections.max.reauth.ms)".to_string(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_leaves_secrets_out() {
        let security = SecurityConfig {
            inter_broker_sasl: Some((
                SaslMechanism::ScramSha256,
                "broker".to_string(),
                "hunter2-pw".to_string(),
            )),
            ..SecurityConfig::default()
        };
        let text = format!("{security:?}");
        assert!(!text.contains("hunter2-pw"), "{text}");
        assert!(text.contains("broker"), "{text}");
        let mut config = crate::config::BrokerConfig::new(
            "127.0.0.1:9092".parse().unwrap(),
            "/nonexistent".into(),
            vec![0],
        );
        config.security = security;
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2-pw"), "{text}");

        let credential = scram::Credential {
            mechanism: SaslMechanism::ScramSha256,
            iterations: 4096,
            salt: vec![1; 32],
            stored_key: vec![0xab; 32],
            server_key: vec![0xcd; 32],
        };
        let stored = credential.to_stored();
        for text in [format!("{credential:?}"), format!("{stored:?}")] {
            assert!(!text.contains("171") && !text.contains("205"), "{text}");
            assert!(text.contains("4096"), "{text}");
        }
    }

    #[test]
    fn listeners_parse_in_kafkas_syntax() {
        let l = parse_listeners("PLAINTEXT://127.0.0.1:9092,sasl_ssl://:9093", None).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].protocol, SecurityProtocol::Plaintext);
        assert_eq!(l[1].name, "SASL_SSL");
        assert_eq!(l[1].protocol, SecurityProtocol::SaslSsl);
        assert_eq!(l[1].addr, "0.0.0.0:9093".parse().unwrap());
        let l =
            parse_listeners("INTERNAL://127.0.0.1:9094", Some("INTERNAL:SASL_PLAINTEXT")).unwrap();
        assert_eq!(l[0].protocol, SecurityProtocol::SaslPlaintext);
        assert!(parse_listeners("INTERNAL://127.0.0.1:9094", None).is_err());
        assert!(parse_listeners("PLAINTEXT://a:1,PLAINTEXT://b:2", None).is_err());
        assert!(parse_listeners("", None).is_err());
        let mut l = parse_listeners("PLAINTEXT://127.0.0.1:0", None).unwrap();
        apply_advertised(&mut l, "PLAINTEXT://broker1.example:9092").unwrap();
        assert_eq!(l[0].advertised, Some(("broker1.example".into(), 9092)));
        assert!(apply_advertised(&mut l, "SSL://x:1").is_err());
    }
}
