//! `ringbroker user create|list|delete`: SCRAM users in a stopped broker's data directory
//! (`meta/scram-credentials.json`), so a broker with SASL listeners is usable from its first
//! start. The data directory's lock is taken first: a running broker refuses the command
//! (use AlterUserScramCredentials against it then, e.g. Kafka's `kafka-configs.sh`). A
//! cluster member submits the users of this file that the quorum lacks when it starts.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use ringbroker_broker::security::credentials::{self, Credentials};
use ringbroker_broker::security::scram::{self, Credential};
use ringbroker_broker::security::SaslMechanism;
use std::path::{Path, PathBuf};

/// Longest password read from `--password-file`.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Iterations of a credential `user create` makes unless told (Kafka's default, 4096).
pub const ITERATIONS_DEFAULT: u32 = 4096;

#[derive(Args, Debug)]
pub struct UserArgs {
    /// The broker's data directory (the broker must be stopped).
    #[arg(long, env = "RINGBROKER_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Sets NAME's credential for one SCRAM mechanism (replacing one it had). PLAIN logins
    /// are checked against the same credentials.
    Create {
        name: String,
        /// SCRAM-SHA-256 or SCRAM-SHA-512.
        #[arg(long)]
        mechanism: String,
        /// PBKDF2 iterations (4096..=16384).
        #[arg(long, default_value_t = ITERATIONS_DEFAULT)]
        iterations: u32,
        /// File holding the password (one trailing newline is ignored).
        #[arg(long)]
        password_file: PathBuf,
    },
    /// Users and their mechanisms and iterations.
    List,
    /// Removes NAME's credential for one mechanism (every mechanism without --mechanism).
    Delete {
        name: String,
        #[arg(long)]
        mechanism: Option<String>,
    },
}

fn scram_mechanism(name: &str) -> Result<SaslMechanism> {
    match SaslMechanism::from_name(&name.to_ascii_uppercase()) {
        Some(m @ (SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512)) => Ok(m),
        _ => bail!("--mechanism {name}: expected SCRAM-SHA-256 or SCRAM-SHA-512"),
    }
}

fn read_password(path: &Path) -> Result<Vec<u8>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("--password-file {}", path.display()))?;
    if meta.len() > PASSWORD_BYTES_MAX as u64 + 2 {
        bail!(
            "--password-file {}: longer than {PASSWORD_BYTES_MAX} bytes",
            path.display()
        );
    }
    let mut password =
        std::fs::read(path).with_context(|| format!("--password-file {}", path.display()))?;
    if password.ends_with(b"\n") {
        password.pop();
        if password.ends_with(b"\r") {
            password.pop();
        }
    }
    if password.is_empty() {
        bail!("--password-file {}: the password is empty", path.display());
    }
    if password.len() > PASSWORD_BYTES_MAX {
        bail!(
            "--password-file {}: longer than {PASSWORD_BYTES_MAX} bytes",
            path.display()
        );
    }
    Ok(password)
}

pub fn run(args: UserArgs) -> Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./ringbroker-data"));
    // Held until the command ends: no broker starts meanwhile, none runs now.
    let _lock = ringbroker_broker::server::lock_data_dir(&data_dir).map_err(|e| anyhow!("{e}"))?;
    let mut store = Credentials::load(&data_dir)
        .with_context(|| format!("reading {}", credentials::file_path(&data_dir).display()))?;
    match args.command {
        UserCommand::Create {
            name,
            mechanism,
            iterations,
            password_file,
        } => {
            let mechanism = scram_mechanism(&mechanism)?;
            if name.is_empty() || name.len() > scram::USER_BYTES_MAX {
                bail!("user name must be 1..={} bytes", scram::USER_BYTES_MAX);
            }
            let password = read_password(&password_file)?;
            let credential = Credential::generate(mechanism, &password, iterations)
                .map_err(|e| anyhow!("{e}"))?;
            store.upsert(&name, credential);
            if store.users.len() > credentials::USERS_MAX {
                bail!("the store holds at most {} users", credentials::USERS_MAX);
            }
            store.save(&data_dir)?;
            println!("user {name}: {} credential set", mechanism.name());
        }
        UserCommand::List => {
            for (user, creds) in &store.users {
                let list: Vec<String> = creds
                    .iter()
                    .map(|c| format!("{}(iterations={})", c.mechanism.name(), c.iterations))
                    .collect();
                println!("{user}\t{}", list.join(","));
            }
        }
        UserCommand::Delete { name, mechanism } => {
            let mechanisms = match mechanism {
                Some(m) => vec![scram_mechanism(&m)?],
                None => vec![SaslMechanism::ScramSha256, SaslMechanism::ScramSha512],
            };
            let mut removed = false;
            for m in mechanisms {
                removed |= store.remove(&name, m);
            }
            if !removed {
                bail!("user {name} has no such credential");
            }
            store.save(&data_dir)?;
            println!("user {name}: credential deleted");
        }
    }
    Ok(())
}
