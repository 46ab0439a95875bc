//! How the shared client (admin CLI and `ringbroker bench`) reaches a secured broker: the
//! flags every connecting command takes (Kafka's `security.protocol`, `ssl.truststore`,
//! `ssl.keystore`, `sasl.mechanism`, `sasl.jaas.config` in flag form) and what they resolve
//! to: a rustls client configuration and SASL credentials.
//!
//! Env vars: `RINGBROKER_SECURITY_PROTOCOL`, `RINGBROKER_TLS_CA_FILE`,
//! `RINGBROKER_CLIENT_TLS_CERT_FILE`, `RINGBROKER_CLIENT_TLS_KEY_FILE`,
//! `RINGBROKER_SASL_MECHANISM`, `RINGBROKER_SASL_USER`, `RINGBROKER_SASL_PASSWORD_FILE`. The
//! client's certificate and key take `CLIENT_` names so that a shell that exports
//! `RINGBROKER_TLS_CERT_FILE` for `ringbroker serve` does not make the CLI present the
//! broker's own identity.

use anyhow::{bail, Context, Result};
use clap::Args;
use ringbroker_broker::security::{tls, SaslMechanism, SecurityProtocol};
use rustls::pki_types::ServerName;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes a password file may hold (the password is its first line).
pub const PASSWORD_FILE_BYTES_MAX: u64 = 64 << 10;

/// The client's security flags; flattened into the CLI's shared arguments and into
/// `ringbroker bench`'s.
#[derive(Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (Kafka's `security.protocol`): must match
    /// the listener connected to. [default: PLAINTEXT]
    #[arg(long, env = "RINGBROKER_SECURITY_PROTOCOL", global = true, value_parser = parse_protocol)]
    pub security_protocol: Option<SecurityProtocol>,
    /// PEM file of the CA certificate(s) the broker's certificate must chain to (SSL,
    /// SASL_SSL; the broker's name or IP must be in its subjectAltName).
    #[arg(long, env = "RINGBROKER_TLS_CA_FILE", global = true)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM certificate (chain) this client presents (mTLS; with --tls-key-file).
    #[arg(long, env = "RINGBROKER_CLIENT_TLS_CERT_FILE", global = true)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "RINGBROKER_CLIENT_TLS_KEY_FILE", global = true)]
    pub tls_key_file: Option<PathBuf>,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_PLAINTEXT, SASL_SSL). [default:
    /// SCRAM-SHA-512]
    #[arg(long, env = "RINGBROKER_SASL_MECHANISM", global = true, value_parser = parse_mechanism)]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    #[arg(long, env = "RINGBROKER_SASL_USER", global = true)]
    pub sasl_user: Option<String>,
    /// File whose first line is the SASL password (never given on the command line, where
    /// other users could read it).
    #[arg(long, env = "RINGBROKER_SASL_PASSWORD_FILE", global = true)]
    pub sasl_password_file: Option<PathBuf>,
}

fn parse_protocol(text: &str) -> Result<SecurityProtocol, String> {
    SecurityProtocol::from_name(text).ok_or_else(|| {
        format!("{text:?} is not a security protocol (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)")
    })
}

fn parse_mechanism(text: &str) -> Result<SaslMechanism, String> {
    SaslMechanism::from_name(&text.to_ascii_uppercase()).ok_or_else(|| {
        format!("{text:?} is not a SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)")
    })
}

/// SASL identity of the client. The password is never printed (`Debug` hides it).
#[derive(Clone)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// What every connection of one command uses.
#[derive(Clone)]
pub struct ClientSecurity {
    pub protocol: SecurityProtocol,
    /// Set when `protocol` uses TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Set when `protocol` uses SASL.
    pub sasl: Option<SaslCredentials>,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl)
            .finish()
    }
}

impl ClientSecurity {
    /// A plaintext client (no flags).
    pub fn plaintext() -> Arc<ClientSecurity> {
        Arc::new(ClientSecurity {
            protocol: SecurityProtocol::Plaintext,
            tls: None,
            sasl: None,
        })
    }
}

impl SecurityArgs {
    /// Checks the combination and loads the files: certificates, key, password.
    pub fn resolve(&self) -> Result<Arc<ClientSecurity>> {
        let protocol = self
            .security_protocol
            .unwrap_or(SecurityProtocol::Plaintext);
        let tls_flag = [
            ("--tls-ca-file", self.tls_ca_file.is_some()),
            ("--tls-cert-file", self.tls_cert_file.is_some()),
            ("--tls-key-file", self.tls_key_file.is_some()),
        ]
        .into_iter()
        .find(|(_, given)| *given);
        let tls = if protocol.uses_tls() {
            Some(Arc::new(self.tls_config(protocol)?))
        } else {
            if let Some((flag, _)) = tls_flag {
                bail!("{flag} is for --security-protocol SSL or SASL_SSL (given: {protocol})");
            }
            None
        };
        let sasl_flag = [
            ("--sasl-mechanism", self.sasl_mechanism.is_some()),
            ("--sasl-user", self.sasl_user.is_some()),
            ("--sasl-password-file", self.sasl_password_file.is_some()),
        ]
        .into_iter()
        .find(|(_, given)| *given);
        let sasl = if protocol.uses_sasl() {
            let (Some(user), Some(file)) = (&self.sasl_user, &self.sasl_password_file) else {
                bail!("--security-protocol {protocol} needs --sasl-user and --sasl-password-file");
            };
            if user.is_empty() {
                bail!("--sasl-user is empty");
            }
            Some(SaslCredentials {
                mechanism: self.sasl_mechanism.unwrap_or(SaslMechanism::ScramSha512),
                user: user.clone(),
                password: read_password(file)?,
            })
        } else {
            if let Some((flag, _)) = sasl_flag {
                bail!(
                    "{flag} is for --security-protocol SASL_PLAINTEXT or SASL_SSL (given: {protocol})"
                );
            }
            None
        };
        Ok(Arc::new(ClientSecurity {
            protocol,
            tls,
            sasl,
        }))
    }

    fn tls_config(&self, protocol: SecurityProtocol) -> Result<rustls::ClientConfig> {
        let Some(ca_file) = &self.tls_ca_file else {
            bail!(
                "--security-protocol {protocol} needs --tls-ca-file (the CA that signed the broker's certificate)"
            );
        };
        // The broker's PEM readers, naming this command's flags in their errors.
        let roots = tls::load_roots("--tls-ca-file", ca_file)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
        let config = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                let chain = tls::load_certs("--tls-cert-file", cert)?;
                let key = tls::load_key("--tls-key-file", key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .context("--tls-cert-file / --tls-key-file do not form a usable identity")?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => bail!("--tls-cert-file and --tls-key-file go together"),
        };
        Ok(config)
    }
}

/// The first line of `path`, bounded by [`PASSWORD_FILE_BYTES_MAX`].
fn read_password(path: &Path) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("--sasl-password-file {}", path.display()))?;
    let mut text = String::new();
    file.take(PASSWORD_FILE_BYTES_MAX)
        .read_to_string(&mut text)
        .with_context(|| format!("--sasl-password-file {}", path.display()))?;
    let password = text.lines().next().unwrap_or("");
    if password.is_empty() {
        bail!(
            "--sasl-password-file {}: the first line (the password) is empty",
            path.display()
        );
    }
    Ok(password.to_string())
}

/// The name a broker's certificate must carry for `addr` (host:port): its IP address or DNS
/// name.
pub fn server_name(addr: &str) -> Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| anyhow::anyhow!("{host:?} is not a name TLS can verify: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_must_match_the_protocol() {
        let plain = SecurityArgs::default().resolve().unwrap();
        assert_eq!(plain.protocol, SecurityProtocol::Plaintext);
        assert!(plain.tls.is_none() && plain.sasl.is_none());

        let e = SecurityArgs {
            security_protocol: Some(SecurityProtocol::Ssl),
            ..SecurityArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{e:#}").contains("--tls-ca-file"), "{e:#}");

        let e = SecurityArgs {
            tls_ca_file: Some("/nonexistent".into()),
            ..SecurityArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{e:#}").contains("SSL or SASL_SSL"), "{e:#}");

        let e = SecurityArgs {
            security_protocol: Some(SecurityProtocol::SaslPlaintext),
            sasl_user: Some("alice".into()),
            ..SecurityArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{e:#}").contains("--sasl-password-file"), "{e:#}");
    }

    #[test]
    fn the_password_is_the_first_line_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let s = SecurityArgs {
            security_protocol: Some(SecurityProtocol::SaslPlaintext),
            sasl_user: Some("alice".into()),
            sasl_password_file: Some(file.clone()),
            ..SecurityArgs::default()
        }
        .resolve()
        .unwrap();
        let sasl = s.sasl.as_ref().unwrap();
        assert_eq!(sasl.password, "s3cret");
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
        assert!(!format!("{s:?}").contains("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        let e = SecurityArgs {
            security_protocol: Some(SecurityProtocol::SaslPlaintext),
            sasl_user: Some("alice".into()),
            sasl_password_file: Some(file),
            ..SecurityArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{e:#}").contains("empty"), "{e:#}");
    }

    #[test]
    fn server_names_from_addresses() {
        assert!(matches!(
            server_name("127.0.0.1:9093").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:9093").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("broker1.example:9093").unwrap(),
            ServerName::DnsName(_)
        ));
    }
}
