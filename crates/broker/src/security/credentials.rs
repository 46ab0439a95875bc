//! The SCRAM credential store: per user, one salted credential per SCRAM mechanism (never a
//! password).
//!
//! Every shard thread holds a read copy ([`current`], an `Arc` swapped whole on change, so a
//! login costs no lock). Where the truth lives:
//! - a single node: `<data-dir>/meta/scram-credentials.json` (mode 0600), loaded at start;
//!   shard 0 is the only writer ([`alter`] runs there), it persists the new store then hands
//!   it to every shard through the mesh;
//! - a cluster member: the metadata image's `scram_credentials`, changed through the quorum
//!   (`AdminRequest::AlterScramCredentials`) and handed to every shard when an image is
//!   applied. The local file is then only a bootstrap: credentials it holds for a
//!   (user, mechanism) the image lacks are submitted to the quorum once at start
//!   ([`bootstrap_cluster`]), so `ringbroker user create` works before the first start in both
//!   modes. Once submitted (or found in the image) the file is renamed
//!   `scram-credentials.json.submitted`, so a credential later deleted through the quorum is
//!   not brought back by the next start; a later `ringbroker user create` on that node writes
//!   a fresh file, submitted once at its next start.

use super::scram::Credential;
use super::SaslMechanism;
use ringbroker_cluster::ScramCredential;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Users the store may hold (bounds the file and every shard's copy).
pub const USERS_MAX: usize = ringbroker_cluster::state::SCRAM_USERS_MAX;
/// Largest credentials file read at start.
pub const FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Credentials by user name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub users: BTreeMap<String, Vec<Credential>>,
}

impl Credentials {
    /// `user`'s credential for `mechanism`.
    pub fn get(&self, user: &str, mechanism: SaslMechanism) -> Option<&Credential> {
        self.users
            .get(user)?
            .iter()
            .find(|c| c.mechanism == mechanism)
    }

    /// From the metadata image's form (credentials this broker cannot check are left out).
    pub fn from_image(stored: &BTreeMap<String, Vec<ScramCredential>>) -> Credentials {
        Credentials {
            users: stored
                .iter()
                .map(|(u, cs)| {
                    (
                        u.clone(),
                        cs.iter().filter_map(Credential::from_stored).collect(),
                    )
                })
                .filter(|(_, cs): &(String, Vec<Credential>)| !cs.is_empty())
                .collect(),
        }
    }

    /// The metadata image's (and the file's) form.
    pub fn to_image(&self) -> BTreeMap<String, Vec<ScramCredential>> {
        self.users
            .iter()
            .map(|(u, cs)| (u.clone(), cs.iter().map(Credential::to_stored).collect()))
            .collect()
    }

    /// Sets `user`'s credential for its mechanism (replacing one it had).
    pub fn upsert(&mut self, user: &str, credential: Credential) {
        let cs = self.users.entry(user.to_string()).or_default();
        cs.retain(|c| c.mechanism != credential.mechanism);
        cs.push(credential);
    }

    /// Removes `user`'s credential for `mechanism`; whether it had one.
    pub fn remove(&mut self, user: &str, mechanism: SaslMechanism) -> bool {
        let Some(cs) = self.users.get_mut(user) else {
            return false;
        };
        let before = cs.len();
        cs.retain(|c| c.mechanism != mechanism);
        let removed = cs.len() != before;
        if cs.is_empty() {
            self.users.remove(user);
        }
        removed
    }

    /// Reads `<data-dir>/meta/scram-credentials.json` (empty when there is none).
    pub fn load(data_dir: &Path) -> io::Result<Credentials> {
        let path = file_path(data_dir);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Credentials::default()),
            Err(e) => return Err(e),
        };
        use std::io::Read as _;
        let mut text = Vec::new();
        file.take(FILE_BYTES_MAX + 1).read_to_end(&mut text)?;
        if text.len() as u64 > FILE_BYTES_MAX {
            return Err(io::Error::other(format!(
                "{} is larger than {FILE_BYTES_MAX} bytes",
                path.display()
            )));
        }
        let stored: BTreeMap<String, Vec<ScramCredential>> = serde_json::from_slice(&text)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        if stored.len() > USERS_MAX {
            return Err(io::Error::other(format!(
                "{} holds more than {USERS_MAX} users",
                path.display()
            )));
        }
        Ok(Credentials::from_image(&stored))
    }

    /// Replaces the file atomically (written with mode 0600, fsynced, renamed, the directory
    /// fsynced).
    pub fn save(&self, data_dir: &Path) -> io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = data_dir.join("meta");
        std::fs::create_dir_all(&dir)?;
        let path = file_path(data_dir);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(&self.to_image()).map_err(io::Error::other)?;
        {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()
    }
}

/// `<data-dir>/meta/scram-credentials.json`.
pub fn file_path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("scram-credentials.json")
}

/// Where a cluster member keeps its bootstrap file once the quorum has taken it
/// (`<data-dir>/meta/scram-credentials.json.submitted`, never read again).
pub fn submitted_path(data_dir: &Path) -> PathBuf {
    data_dir
        .join("meta")
        .join("scram-credentials.json.submitted")
}

/// Cluster mode: the bootstrap file is in the quorum's store; renames it out of the way
/// (keeping its mode, 0600) so no later start submits it again. The directory is fsynced.
pub fn mark_submitted(data_dir: &Path) -> io::Result<()> {
    std::fs::rename(file_path(data_dir), submitted_path(data_dir))?;
    std::fs::File::open(data_dir.join("meta"))?.sync_all()
}

thread_local! {
    static LOCAL: RefCell<Arc<Credentials>> = RefCell::new(Arc::new(Credentials::default()));
}

/// This shard's copy of the store.
pub fn current() -> Arc<Credentials> {
    LOCAL.with(|l| l.borrow().clone())
}

/// Replaces this shard's copy (start-up, a change from shard 0, a metadata image).
pub fn install(credentials: Arc<Credentials>) {
    LOCAL.with(|l| *l.borrow_mut() = credentials);
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterError {
    /// Persisting or submitting failed (Kafka code, message).
    Failed(i16, String),
}

/// One change of an AlterUserScramCredentials request.
#[derive(Debug, Clone)]
pub enum Change {
    Upsert(String, Credential),
    Delete(String, SaslMechanism),
}

/// Applies `changes` to the store: a single node through shard 0 (persisted, then every
/// shard's copy replaced), a cluster member through the quorum. All or nothing.
pub async fn alter(changes: Vec<Change>) -> Result<(), AlterError> {
    if changes.is_empty() {
        return Ok(());
    }
    let shard = crate::shard::current();
    if shard.shared.cluster.is_some() {
        let mut upserts = Vec::new();
        let mut deletions = Vec::new();
        for c in changes {
            match c {
                Change::Upsert(u, c) => upserts.push((u, c.to_stored())),
                Change::Delete(u, m) => deletions.push((u, m.name().to_string())),
            }
        }
        let deadline = std::time::Instant::now() + ALTER_TIMEOUT;
        return crate::shard::cluster::submit(
            ringbroker_cluster::AdminRequest::AlterScramCredentials { upserts, deletions },
            deadline,
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            let (code, message) = crate::shard::cluster::admin_error(e);
            AlterError::Failed(code, message)
        });
    }
    ringbroker_runtime::mesh::call_detached(0, move || async move {
        let shard = crate::shard::current();
        let mut next = (*current()).clone();
        for c in changes {
            match c {
                Change::Upsert(u, c) => next.upsert(&u, c),
                Change::Delete(u, m) => {
                    next.remove(&u, m);
                }
            }
        }
        if next.users.len() > USERS_MAX {
            return Err(AlterError::Failed(
                crate::errors::INVALID_REQUEST,
                format!("the credential store holds at most {USERS_MAX} users"),
            ));
        }
        next.save(&shard.shared.config.data_dir).map_err(|e| {
            AlterError::Failed(
                crate::errors::KAFKA_STORAGE_ERROR,
                format!("could not persist SCRAM credentials: {e}"),
            )
        })?;
        let next = Arc::new(next);
        install(next.clone());
        for s in 1..shard.shared.shard_count {
            let latest = current();
            ringbroker_runtime::mesh::call(s, move || async move { install(latest) }).await;
        }
        Ok(())
    })
    .await
}

/// How long a cluster member waits for the quorum to take a credential change.
pub const ALTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Cluster mode, shard 0 at start: submits the credentials of the local file whose
/// (user, mechanism) the image lacks (users created with `ringbroker user create` before the
/// node joined). Retries until the quorum takes them or the broker stops; then the file is
/// renamed ([`mark_submitted`]): it is submitted once, never again at later starts.
pub async fn bootstrap_cluster(data_dir: PathBuf) {
    let local = match Credentials::load(&data_dir) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "could not read the SCRAM credential bootstrap file");
            return;
        }
    };
    if local.users.is_empty() {
        return;
    }
    loop {
        if crate::server::draining() {
            return;
        }
        let image = crate::shard::cluster::latest_image();
        let present = image
            .as_ref()
            .map(|i| Credentials::from_image(&i.scram_credentials))
            .unwrap_or_default();
        let missing: Vec<Change> = local
            .users
            .iter()
            .flat_map(|(u, cs)| cs.iter().map(move |c| (u, c)))
            .filter(|(u, c)| present.get(u, c.mechanism).is_none())
            .map(|(u, c)| Change::Upsert(u.clone(), c.clone()))
            .collect();
        if missing.is_empty() {
            done_submitting(&data_dir);
            return;
        }
        let n = missing.len();
        match alter(missing).await {
            Ok(()) => {
                tracing::info!(
                    credentials = n,
                    "SCRAM credentials of the local bootstrap file submitted to the quorum"
                );
                done_submitting(&data_dir);
                return;
            }
            Err(AlterError::Failed(_, why)) => {
                tracing::debug!(%why, "SCRAM credential bootstrap not taken yet; retrying");
                ringbroker_runtime::op::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// The bootstrap file is in the quorum's store: rename it (see [`mark_submitted`]).
fn done_submitting(data_dir: &Path) {
    if let Err(e) = mark_submitted(data_dir) {
        tracing::error!(error = %e, "could not rename the submitted SCRAM credential bootstrap file; its credentials will be submitted again at the next start");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_round_trips_through_its_file_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("scram-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(Credentials::load(&dir).unwrap(), Credentials::default());
        let mut c = Credentials::default();
        let cred = Credential::generate(
            SaslMechanism::ScramSha256,
            b"pw",
            super::super::scram::ITERATIONS_MIN,
        )
        .unwrap();
        c.upsert("alice", cred.clone());
        c.save(&dir).unwrap();
        let mode = std::fs::metadata(file_path(&dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Credentials::load(&dir).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.get("alice", SaslMechanism::ScramSha256), Some(&cred));
        assert!(back.get("alice", SaslMechanism::ScramSha512).is_none());
        let mut back = back;
        assert!(back.remove("alice", SaslMechanism::ScramSha256));
        assert!(back.users.is_empty());
        // Cluster mode, once submitted: out of the way (still 0600), a fresh file may follow.
        mark_submitted(&dir).unwrap();
        assert_eq!(Credentials::load(&dir).unwrap(), Credentials::default());
        let mode = std::fs::metadata(submitted_path(&dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
