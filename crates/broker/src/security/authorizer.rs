//! The ACL authorizer (`--authorizer acl`), with the semantics of Kafka's StandardAuthorizer.
//!
//! Each shard thread holds its own [`AclTable`] (an `Arc`, replaced whole when ACLs change),
//! indexed per resource type: literal names in a hash map, the `*` wildcard entries apart,
//! prefixed patterns in a hash map probed with the name's prefixes of each length some pattern
//! has. A check takes no lock and allocates nothing; with the authorizer off it reads one
//! thread-local flag.
//!
//! Where the ACLs live: a broker alone keeps them in `<data-dir>/meta/acls.json` (shard 0 is
//! its only writer and sends each new table to every shard through the mesh); a cluster
//! member keeps them in the metadata image (`MetadataImage::acls`), changed through the
//! controller and copied to every shard when an image is applied.
//!
//! Rules ([`AclTable::authorize`]):
//! - authorizer off: allowed; a super user (`--super-users`): allowed;
//! - the entries bound to the resource are those of its literal name, of the literal `*`,
//!   and of every prefixed pattern its name starts with; none at all:
//!   `--allow-everyone-if-no-acl-found` decides;
//! - an entry applies when its principal is the connection's or `User:*` and its host is `*`
//!   or the peer's address;
//! - a DENY entry for the operation (or ALL) refuses, whatever else allows;
//! - an ALLOW entry for the operation (or ALL) allows; DESCRIBE is implied by READ, WRITE,
//!   DELETE and ALTER, DESCRIBE_CONFIGS by ALTER_CONFIGS.

use crate::acl;
use crate::security::resource;
use ringbroker_cluster::AclBinding;
use ringbroker_storage::atomic_file::write_atomically;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `AclOperation` codes that only filters and `ALL` entries use.
pub const OP_ANY: i8 = 1;
pub const OP_ALL: i8 = 2;
/// `PatternType` codes.
pub const PATTERN_ANY: i8 = 1;
pub const PATTERN_MATCH: i8 = 2;
pub const PATTERN_LITERAL: i8 = 3;
pub const PATTERN_PREFIXED: i8 = 4;
/// `AclPermissionType` codes.
pub const PERMISSION_ANY: i8 = 1;
pub const PERMISSION_DENY: i8 = 2;
pub const PERMISSION_ALLOW: i8 = 3;
/// `ResourceType::ANY` (filters only).
pub const RESOURCE_ANY: i8 = 1;
/// The literal resource name every name matches.
pub const WILDCARD: &str = "*";
/// The principal every principal matches.
pub const WILDCARD_PRINCIPAL: &str = "User:*";
/// The host every host matches.
pub const WILDCARD_HOST: &str = "*";

/// ACL creations (or deletion filters) one request may carry; more close the connection.
pub const ACLS_PER_REQUEST_MAX: usize = 1_000;
/// ACL entries a broker (or cluster) holds at most; a creation beyond is refused.
pub const ACLS_TOTAL_MAX: usize = ringbroker_cluster::state::ACLS_TOTAL_MAX;
/// Bytes of a resource name, principal or host in an ACL.
pub const ACL_FIELD_BYTES_MAX: usize = 1_024;

/// Resource types entries may be bound to (topic, group, cluster, transactional id).
const RESOURCE_TYPES: usize = 4;

fn type_index(resource_type: i8) -> Option<usize> {
    match resource_type {
        resource::TOPIC => Some(0),
        resource::GROUP => Some(1),
        resource::CLUSTER => Some(2),
        resource::TRANSACTIONAL_ID => Some(3),
        _ => None,
    }
}

/// The label of a resource type in logs and metrics.
pub fn resource_type_name(resource_type: i8) -> &'static str {
    match resource_type {
        resource::TOPIC => "topic",
        resource::GROUP => "group",
        resource::CLUSTER => "cluster",
        resource::TRANSACTIONAL_ID => "transactional_id",
        _ => "unknown",
    }
}

/// One entry as a check reads it.
#[derive(Debug, Clone)]
struct Entry {
    principal: Box<str>,
    host: Box<str>,
    operation: u8,
    allow: bool,
}

impl Entry {
    fn applies_to(&self, principal: &str, host: &str) -> bool {
        (&*self.principal == principal || &*self.principal == WILDCARD_PRINCIPAL)
            && (&*self.host == WILDCARD_HOST || &*self.host == host)
    }
}

#[derive(Debug, Default)]
struct ResourceAcls {
    literal: HashMap<Box<str>, Vec<Entry>>,
    wildcard: Vec<Entry>,
    prefixed: HashMap<Box<str>, Vec<Entry>>,
    /// The distinct lengths (bytes) of the prefixed patterns, ascending.
    prefix_lengths: Vec<usize>,
}

/// The outcome of the entries seen so far.
#[derive(Default)]
struct Verdict {
    found: bool,
    allowed: bool,
    denied: bool,
}

impl Verdict {
    fn take(&mut self, entries: &[Entry], principal: &str, host: &str, op: u8) {
        for e in entries {
            self.found = true;
            if !e.applies_to(principal, host) {
                continue;
            }
            let all = e.operation == OP_ALL as u8;
            if !e.allow {
                if all || e.operation == op {
                    self.denied = true;
                }
            } else if all || e.operation == op || implies(e.operation, op) {
                self.allowed = true;
            }
        }
    }
}

/// An ALLOW of `granted` also allows `op` (Kafka: DESCRIBE with READ, WRITE, DELETE, ALTER;
/// DESCRIBE_CONFIGS with ALTER_CONFIGS).
fn implies(granted: u8, op: u8) -> bool {
    match op {
        acl::DESCRIBE => matches!(granted, acl::READ | acl::WRITE | acl::DELETE | acl::ALTER),
        acl::DESCRIBE_CONFIGS => granted == acl::ALTER_CONFIGS,
        _ => false,
    }
}

/// The ACLs and authorizer settings a shard checks against.
#[derive(Debug)]
pub struct AclTable {
    enabled: bool,
    allow_if_no_acl: bool,
    super_users: Vec<Box<str>>,
    /// Every entry, in the order created (what DescribeAcls lists and acls.json holds).
    bindings: Vec<AclBinding>,
    types: [ResourceAcls; RESOURCE_TYPES],
}

impl AclTable {
    /// The table of `bindings` under `security`'s settings.
    pub fn build(
        security: &crate::security::SecurityConfig,
        bindings: Vec<AclBinding>,
    ) -> AclTable {
        let mut types: [ResourceAcls; RESOURCE_TYPES] = Default::default();
        for b in &bindings {
            let Some(index) = type_index(b.resource_type) else {
                continue;
            };
            let Ok(operation) = u8::try_from(b.operation) else {
                continue;
            };
            let entry = Entry {
                principal: b.principal.as_str().into(),
                host: b.host.as_str().into(),
                operation,
                allow: b.permission_type == PERMISSION_ALLOW,
            };
            let t = &mut types[index];
            match b.pattern_type {
                PATTERN_LITERAL if b.resource_name == WILDCARD => t.wildcard.push(entry),
                PATTERN_LITERAL => t
                    .literal
                    .entry(b.resource_name.as_str().into())
                    .or_default()
                    .push(entry),
                PATTERN_PREFIXED => {
                    t.prefixed
                        .entry(b.resource_name.as_str().into())
                        .or_default()
                        .push(entry);
                    if let Err(at) = t.prefix_lengths.binary_search(&b.resource_name.len()) {
                        t.prefix_lengths.insert(at, b.resource_name.len());
                    }
                }
                _ => {}
            }
        }
        AclTable {
            enabled: security.authorizer,
            allow_if_no_acl: security.allow_everyone_if_no_acl_found,
            super_users: security
                .super_users
                .iter()
                .map(|s| s.as_str().into())
                .collect(),
            bindings,
            types,
        }
    }

    /// A table that allows everything (no authorizer).
    pub fn off() -> AclTable {
        AclTable::build(&crate::security::SecurityConfig::default(), Vec::new())
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn bindings(&self) -> &[AclBinding] {
        &self.bindings
    }

    /// Whether `principal`, connected from `host` (an IP address), may perform `op` on the
    /// resource `resource_type`/`name`.
    pub fn authorize(
        &self,
        principal: &str,
        host: &str,
        op: u8,
        resource_type: i8,
        name: &str,
    ) -> bool {
        if !self.enabled || self.super_users.iter().any(|s| &**s == principal) {
            return true;
        }
        let Some(index) = type_index(resource_type) else {
            return false;
        };
        let t = &self.types[index];
        let mut verdict = Verdict::default();
        if let Some(entries) = t.literal.get(name) {
            verdict.take(entries, principal, host, op);
        }
        verdict.take(&t.wildcard, principal, host, op);
        for &len in &t.prefix_lengths {
            if len > name.len() {
                break;
            }
            if !name.is_char_boundary(len) {
                continue;
            }
            if let Some(entries) = t.prefixed.get(&name[..len]) {
                verdict.take(entries, principal, host, op);
            }
        }
        if verdict.denied {
            return false;
        }
        if !verdict.found {
            return self.allow_if_no_acl;
        }
        verdict.allowed
    }
}

impl AclTable {
    /// Kafka's `authorizeByResourceType`: whether `principal` may perform `op` on some
    /// resource of `resource_type` (InitProducerId: WRITE on any topic). An ALLOW entry for
    /// the principal anywhere of the type allows, unless a DENY on the literal `*` refuses
    /// all of them; a type without entries follows `--allow-everyone-if-no-acl-found`.
    pub fn authorize_any(&self, principal: &str, host: &str, op: u8, resource_type: i8) -> bool {
        if !self.enabled || self.super_users.iter().any(|s| &**s == principal) {
            return true;
        }
        let Some(index) = type_index(resource_type) else {
            return false;
        };
        let t = &self.types[index];
        let op_matches = |e: &Entry| e.operation == op || e.operation == OP_ALL as u8;
        let applies = |e: &&Entry| e.applies_to(principal, host) && op_matches(e);
        if t.wildcard.iter().filter(applies).any(|e| !e.allow) {
            return false;
        }
        let mut all = t
            .literal
            .values()
            .chain(t.prefixed.values())
            .flatten()
            .chain(&t.wildcard)
            .peekable();
        if all.peek().is_none() {
            return self.allow_if_no_acl;
        }
        all.filter(applies).any(|e| e.allow)
    }
}

thread_local! {
    /// The authorizer is on (this shard has a table with `enabled`): the one read a check
    /// makes when it is off.
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static TABLE: RefCell<Arc<AclTable>> = RefCell::new(Arc::new(AclTable::off()));
    /// Denials on this shard, by resource type (topic, group, cluster, transactional id).
    static DENIED: [Cell<u64>; RESOURCE_TYPES] = const {
        [Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0)]
    };
}

/// Makes `table` this shard's (start-up, and each time the ACLs change).
pub fn install(table: Arc<AclTable>) {
    ENABLED.with(|e| e.set(table.enabled));
    TABLE.with(|t| *t.borrow_mut() = table);
}

/// This shard's table.
pub fn table() -> Arc<AclTable> {
    TABLE.with(|t| t.borrow().clone())
}

/// The authorizer is on (on this shard).
pub fn enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// Denials counted on this shard so far, by resource type label.
pub fn denied_counts() -> [(&'static str, u64); RESOURCE_TYPES] {
    DENIED.with(|d| {
        [
            ("topic", d[0].get()),
            ("group", d[1].get()),
            ("cluster", d[2].get()),
            ("transactional_id", d[3].get()),
        ]
    })
}

/// The address part of a peer written `ip:port` (`[v6]:port`), canonical: an IPv4 peer of a
/// listener bound to `[::]` (`[::ffff:a.b.c.d]:port`) is `a.b.c.d`, as host rules name it.
pub fn peer_host(peer: &str) -> std::borrow::Cow<'_, str> {
    let host = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            let canonical = ip.to_canonical();
            if canonical != ip {
                return canonical.to_string().into();
            }
        }
    }
    host.into()
}

/// See [`crate::security::authorize`].
#[inline]
pub fn authorize(conn: &crate::connection::Conn, op: u8, resource_type: i8, name: &str) -> bool {
    if !ENABLED.with(Cell::get) {
        return true;
    }
    check(conn, op, resource_type, name)
}

#[inline(never)]
fn check(conn: &crate::connection::Conn, op: u8, resource_type: i8, name: &str) -> bool {
    let principal = conn.principal.borrow();
    let allowed = TABLE.with(|t| {
        t.borrow()
            .authorize(&principal, &peer_host(&conn.peer), op, resource_type, name)
    });
    if !allowed {
        if let Some(i) = type_index(resource_type) {
            DENIED.with(|d| d[i].set(d[i].get() + 1));
        }
        if let Some(suppressed) = crate::limits::warn_allowed() {
            tracing::info!(
                suppressed,
                principal = %&*principal,
                peer = %conn.peer,
                operation = op,
                resource_type = resource_type_name(resource_type),
                resource = name,
                "authorization denied"
            );
        }
    }
    allowed
}

/// `op` on the topic `name` (see [`authorize`]).
#[inline]
pub fn on_topic(conn: &crate::connection::Conn, op: u8, name: &str) -> bool {
    authorize(conn, op, resource::TOPIC, name)
}

/// `op` on the consumer group `name`.
#[inline]
pub fn on_group(conn: &crate::connection::Conn, op: u8, name: &str) -> bool {
    authorize(conn, op, resource::GROUP, name)
}

/// `op` on the cluster.
#[inline]
pub fn on_cluster(conn: &crate::connection::Conn, op: u8) -> bool {
    authorize(conn, op, resource::CLUSTER, resource::CLUSTER_NAME)
}

/// The group APIs that need READ on the group (Join, Sync, Heartbeat, Leave,
/// OffsetCommit): GROUP_AUTHORIZATION_FAILED without it.
#[inline]
pub fn group_read_refusal(conn: &crate::connection::Conn, group: &str) -> Option<i16> {
    (!on_group(conn, acl::READ, group)).then_some(crate::errors::GROUP_AUTHORIZATION_FAILED)
}

/// `ConfigResource.Type` codes (DescribeConfigs, AlterConfigs).
const CONFIG_TOPIC: i8 = 2;

/// Describe/AlterConfigs: `op` (DESCRIBE_CONFIGS, ALTER_CONFIGS) on a topic's configs needs it
/// on the topic (TOPIC_AUTHORIZATION_FAILED), on a broker's (or logger's) on the cluster
/// (CLUSTER_AUTHORIZATION_FAILED).
pub fn config_refusal(
    conn: &crate::connection::Conn,
    op: u8,
    config_resource_type: i8,
    name: &str,
) -> Option<(i16, String)> {
    if config_resource_type == CONFIG_TOPIC {
        (!on_topic(conn, op, name)).then(|| {
            (
                crate::errors::TOPIC_AUTHORIZATION_FAILED,
                "Topic authorization failed.".to_string(),
            )
        })
    } else {
        (!on_cluster(conn, op)).then(|| {
            (
                crate::errors::CLUSTER_AUTHORIZATION_FAILED,
                "Cluster authorization failed.".to_string(),
            )
        })
    }
}

/// See [`AclTable::authorize_any`].
pub fn authorize_any(conn: &crate::connection::Conn, op: u8, resource_type: i8) -> bool {
    if !ENABLED.with(Cell::get) {
        return true;
    }
    let principal = conn.principal.borrow();
    TABLE.with(|t| {
        t.borrow()
            .authorize_any(&principal, &peer_host(&conn.peer), op, resource_type)
    })
}

/// Like [`authorize`] without counting or logging a denial (filters: Metadata listing all
/// topics, ListGroups, authorized-operations fields).
pub fn may(conn: &crate::connection::Conn, op: u8, resource_type: i8, name: &str) -> bool {
    if !ENABLED.with(Cell::get) {
        return true;
    }
    let principal = conn.principal.borrow();
    TABLE.with(|t| {
        t.borrow()
            .authorize(&principal, &peer_host(&conn.peer), op, resource_type, name)
    })
}

/// An authorized-operations field: the operations of `operations` the connection may perform
/// on the resource when the client asked, [`acl::OMITTED`] otherwise.
pub fn authorized_operations(
    conn: &crate::connection::Conn,
    asked: bool,
    operations: &[u8],
    resource_type: i8,
    name: &str,
) -> i32 {
    if !asked {
        return acl::OMITTED;
    }
    operations.iter().fold(0i32, |bits, &op| {
        if may(conn, op, resource_type, name) {
            bits | (1 << op)
        } else {
            bits
        }
    })
}

// ---- Validation and filters (CreateAcls, DescribeAcls, DeleteAcls). ----

/// Why an ACL creation is refused (INVALID_REQUEST).
pub fn validate_new(b: &AclBinding) -> Result<(), String> {
    if type_index(b.resource_type).is_none() {
        return Err(format!("invalid resource type {}", b.resource_type));
    }
    if b.pattern_type != PATTERN_LITERAL && b.pattern_type != PATTERN_PREFIXED {
        return Err(format!(
            "invalid pattern type {} (LITERAL or PREFIXED)",
            b.pattern_type
        ));
    }
    if b.resource_name.is_empty() {
        return Err("invalid empty resource name".to_string());
    }
    if b.resource_type == resource::CLUSTER && b.resource_name != resource::CLUSTER_NAME {
        return Err(format!(
            "the only valid name for the CLUSTER resource is {}",
            resource::CLUSTER_NAME
        ));
    }
    let valid_op = b.operation == OP_ALL
        || u8::try_from(b.operation)
            .is_ok_and(|op| (acl::READ..=acl::IDEMPOTENT_WRITE).contains(&op));
    if !valid_op {
        return Err(format!("invalid operation {}", b.operation));
    }
    if b.permission_type != PERMISSION_ALLOW && b.permission_type != PERMISSION_DENY {
        return Err(format!("invalid permission type {}", b.permission_type));
    }
    match b.principal.split_once(':') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
        _ => {
            return Err(format!(
                "invalid principal {:?} (expected User:name)",
                b.principal
            ))
        }
    }
    if b.host.is_empty() {
        return Err("invalid empty host".to_string());
    }
    let longest = [&b.resource_name, &b.principal, &b.host]
        .iter()
        .map(|s| s.len())
        .max()
        .unwrap_or(0);
    if longest > ACL_FIELD_BYTES_MAX {
        return Err(format!(
            "a name, principal or host is longer than {ACL_FIELD_BYTES_MAX} bytes"
        ));
    }
    Ok(())
}

/// A DescribeAcls / DeleteAcls filter (Kafka's `AclBindingFilter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission_type: i8,
}

impl AclFilter {
    /// Why the filter is refused (INVALID_REQUEST): a code Kafka does not define.
    pub fn validate(&self) -> Result<(), String> {
        if !(RESOURCE_ANY..=7).contains(&self.resource_type) {
            return Err(format!("invalid resource type {}", self.resource_type));
        }
        if !(PATTERN_ANY..=PATTERN_PREFIXED).contains(&self.pattern_type) {
            return Err(format!("invalid pattern type {}", self.pattern_type));
        }
        if !(OP_ANY..=acl::IDEMPOTENT_WRITE as i8).contains(&self.operation) {
            return Err(format!("invalid operation {}", self.operation));
        }
        if !(PERMISSION_ANY..=PERMISSION_ALLOW).contains(&self.permission_type) {
            return Err(format!("invalid permission type {}", self.permission_type));
        }
        Ok(())
    }

    /// Kafka's `AclBindingFilter.matches`.
    pub fn matches(&self, b: &AclBinding) -> bool {
        self.matches_pattern(b)
            && self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && (self.operation == OP_ANY || self.operation == b.operation)
            && (self.permission_type == PERMISSION_ANY || self.permission_type == b.permission_type)
    }

    /// Kafka's `ResourcePatternFilter.matches`: ANY pattern type matches every pattern of the
    /// exact name; MATCH matches the literal name, the literal `*` and every prefix of the
    /// name.
    fn matches_pattern(&self, b: &AclBinding) -> bool {
        if self.resource_type != RESOURCE_ANY && self.resource_type != b.resource_type {
            return false;
        }
        if self.pattern_type != PATTERN_ANY
            && self.pattern_type != PATTERN_MATCH
            && self.pattern_type != b.pattern_type
        {
            return false;
        }
        let Some(name) = &self.resource_name else {
            return true;
        };
        if self.pattern_type == PATTERN_ANY || self.pattern_type == b.pattern_type {
            return *name == b.resource_name;
        }
        match b.pattern_type {
            PATTERN_LITERAL => *name == b.resource_name || b.resource_name == WILDCARD,
            PATTERN_PREFIXED => name.starts_with(&b.resource_name),
            _ => false,
        }
    }
}

// ---- A broker alone: `meta/acls.json`. ----

#[derive(Serialize, Deserialize, Default)]
struct AclsFile {
    acls: Vec<AclBinding>,
}

fn acls_path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("acls.json")
}

/// The ACLs a broker alone keeps (none when the file does not exist).
pub fn load(data_dir: &Path) -> io::Result<Vec<AclBinding>> {
    let path = acls_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let file: AclsFile = serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
            Ok(file.acls)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Persists the ACLs of a broker alone (written new, synced, renamed).
pub fn save(data_dir: &Path, acls: &[AclBinding]) -> io::Result<()> {
    std::fs::create_dir_all(data_dir.join("meta"))?;
    let file = AclsFile {
        acls: acls.to_vec(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
    write_atomically(&acls_path(data_dir), &bytes)
}

/// How a change of the ACL set went.
pub type ChangeResult = Result<(), (i16, String)>;

/// A broker alone (through shard 0, the one writer): applies `change` to the ACL set,
/// persists it and installs the new table on every shard. `change` returns Err to change
/// nothing.
pub async fn change_local<F>(change: F) -> ChangeResult
where
    F: FnOnce(&[AclBinding]) -> Result<Vec<AclBinding>, (i16, String)> + Send + 'static,
{
    use crate::shard::current;
    use ringbroker_runtime::mesh;
    mesh::call_detached(0, move || async move {
        let shard = current();
        let now = table();
        let next = change(now.bindings())?;
        if next == now.bindings() {
            return Ok(());
        }
        save(&shard.shared.config.data_dir, &next).map_err(|e| {
            (
                crate::errors::KAFKA_STORAGE_ERROR,
                format!("could not persist ACLs: {e}"),
            )
        })?;
        let count = next.len();
        install(Arc::new(AclTable::build(
            &shard.shared.config.security,
            next,
        )));
        // Each other shard is sent shard 0's table as it is when sent (a later change may
        // have replaced it meanwhile).
        for s in 1..shard.shared.shard_count {
            let latest = table();
            mesh::call(s, move || async move { install(latest) }).await;
        }
        tracing::info!(acls = count, "ACLs changed");
        Ok(())
    })
    .await
}

/// How long a change of the ACLs may wait for the metadata quorum (cluster mode).
pub const ACL_CHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn too_many(total: usize) -> (i16, String) {
    (
        crate::errors::INVALID_REQUEST,
        format!("the broker would hold {total} ACLs, more than {ACLS_TOTAL_MAX}"),
    )
}

/// Adds `acls` (validated; one already present is not added twice): through the controller
/// in a cluster, else through shard 0. Installed on every shard of this broker when this
/// returns Ok.
pub async fn create(acls: Vec<AclBinding>) -> ChangeResult {
    if crate::shard::current().shared.cluster.is_some() {
        let now = table();
        let present: std::collections::HashSet<&AclBinding> = now.bindings().iter().collect();
        let added: std::collections::HashSet<&AclBinding> =
            acls.iter().filter(|a| !present.contains(a)).collect();
        if now.bindings().len() + added.len() > ACLS_TOTAL_MAX {
            return Err(too_many(now.bindings().len() + added.len()));
        }
        let deadline = std::time::Instant::now() + ACL_CHANGE_TIMEOUT;
        let request = ringbroker_cluster::AdminRequest::CreateAcls { acls };
        return crate::shard::cluster::submit(request, deadline)
            .await
            .map(|_| ())
            .map_err(crate::shard::cluster::admin_error);
    }
    change_local(move |now| {
        let mut present: std::collections::HashSet<&AclBinding> = now.iter().collect();
        let mut next = now.to_vec();
        for a in &acls {
            if present.insert(a) {
                next.push(a.clone());
            }
        }
        if next.len() > ACLS_TOTAL_MAX {
            return Err(too_many(next.len()));
        }
        Ok(next)
    })
    .await
}

/// Removes exactly `acls` (those the filters matched in this shard's table).
pub async fn delete(acls: Vec<AclBinding>) -> ChangeResult {
    if acls.is_empty() {
        return Ok(());
    }
    if crate::shard::current().shared.cluster.is_some() {
        let deadline = std::time::Instant::now() + ACL_CHANGE_TIMEOUT;
        let request = ringbroker_cluster::AdminRequest::DeleteAcls { acls };
        return crate::shard::cluster::submit(request, deadline)
            .await
            .map(|_| ())
            .map_err(crate::shard::cluster::admin_error);
    }
    change_local(move |now| {
        let gone: std::collections::HashSet<&AclBinding> = acls.iter().collect();
        Ok(now.iter().filter(|a| !gone.contains(a)).cloned().collect())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::SecurityConfig;

    fn binding(
        rt: i8,
        name: &str,
        pattern: i8,
        principal: &str,
        host: &str,
        op: u8,
        perm: i8,
    ) -> AclBinding {
        AclBinding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pattern,
            principal: principal.into(),
            host: host.into(),
            operation: op as i8,
            permission_type: perm,
        }
    }

    fn on(allow_if_none: bool) -> SecurityConfig {
        SecurityConfig {
            authorizer: true,
            allow_everyone_if_no_acl_found: allow_if_none,
            super_users: vec!["User:admin".into()],
            ..SecurityConfig::default()
        }
    }

    const T: i8 = resource::TOPIC;
    const G: i8 = resource::GROUP;

    #[test]
    fn off_allows_everything_and_super_users_everything() {
        let t = AclTable::off();
        assert!(t.authorize("User:x", "1.2.3.4", acl::WRITE, T, "a"));
        let t = AclTable::build(
            &on(false),
            vec![binding(
                T,
                "a",
                PATTERN_LITERAL,
                "User:*",
                "*",
                OP_ALL as u8,
                PERMISSION_DENY,
            )],
        );
        assert!(t.authorize("User:admin", "1.2.3.4", acl::WRITE, T, "a"));
        assert!(!t.authorize("User:bob", "1.2.3.4", acl::WRITE, T, "a"));
    }

    #[test]
    fn no_acl_for_the_resource_follows_allow_everyone() {
        let acls = vec![binding(
            T,
            "a",
            PATTERN_LITERAL,
            "User:alice",
            "*",
            acl::READ,
            PERMISSION_ALLOW,
        )];
        let strict = AclTable::build(&on(false), acls.clone());
        let lax = AclTable::build(&on(true), acls);
        assert!(!strict.authorize("User:bob", "h", acl::READ, T, "b"));
        assert!(lax.authorize("User:bob", "h", acl::READ, T, "b"));
        // The resource has an entry (for someone else): not "no ACL found".
        assert!(!lax.authorize("User:bob", "h", acl::READ, T, "a"));
        assert!(lax.authorize("User:alice", "h", acl::READ, T, "a"));
        // Another resource type with the same name has none.
        assert!(lax.authorize("User:bob", "h", acl::READ, G, "a"));
    }

    #[test]
    fn literal_wildcard_and_prefixed_patterns_match() {
        let t = AclTable::build(
            &on(false),
            vec![
                binding(
                    T,
                    "orders",
                    PATTERN_LITERAL,
                    "User:a",
                    "*",
                    acl::WRITE,
                    PERMISSION_ALLOW,
                ),
                binding(
                    T,
                    "*",
                    PATTERN_LITERAL,
                    "User:b",
                    "*",
                    acl::READ,
                    PERMISSION_ALLOW,
                ),
                binding(
                    T,
                    "logs-",
                    PATTERN_PREFIXED,
                    "User:c",
                    "*",
                    acl::WRITE,
                    PERMISSION_ALLOW,
                ),
                binding(
                    T,
                    "l",
                    PATTERN_PREFIXED,
                    "User:d",
                    "*",
                    acl::READ,
                    PERMISSION_ALLOW,
                ),
            ],
        );
        assert!(t.authorize("User:a", "h", acl::WRITE, T, "orders"));
        assert!(!t.authorize("User:a", "h", acl::WRITE, T, "orders2"));
        assert!(!t.authorize("User:a", "h", acl::READ, T, "orders"));
        assert!(t.authorize("User:b", "h", acl::READ, T, "anything"));
        assert!(t.authorize("User:c", "h", acl::WRITE, T, "logs-app"));
        assert!(!t.authorize("User:c", "h", acl::WRITE, T, "log"));
        assert!(!t.authorize("User:c", "h", acl::WRITE, T, "xlogs-app"));
        assert!(t.authorize("User:d", "h", acl::READ, T, "logs-app"));
        assert!(t.authorize("User:d", "h", acl::READ, T, "l"));
        // A literal "*" ACL is not a prefix: a topic named "logs-*" is just a name.
        assert!(!t.authorize("User:c", "h", acl::WRITE, T, "log"));
        // Non-ASCII names: prefix lengths that split a character are skipped.
        assert!(!t.authorize("User:c", "h", acl::WRITE, T, "é"));
    }

    #[test]
    fn deny_wins_and_all_matches_every_operation() {
        let t = AclTable::build(
            &on(false),
            vec![
                binding(
                    T,
                    "t",
                    PATTERN_LITERAL,
                    "User:*",
                    "*",
                    OP_ALL as u8,
                    PERMISSION_ALLOW,
                ),
                binding(
                    T,
                    "t",
                    PATTERN_PREFIXED,
                    "User:eve",
                    "*",
                    acl::WRITE,
                    PERMISSION_DENY,
                ),
                binding(
                    T,
                    "*",
                    PATTERN_LITERAL,
                    "User:mal",
                    "*",
                    OP_ALL as u8,
                    PERMISSION_DENY,
                ),
            ],
        );
        assert!(t.authorize("User:x", "h", acl::WRITE, T, "t"));
        assert!(t.authorize("User:x", "h", acl::ALTER_CONFIGS, T, "t"));
        assert!(!t.authorize("User:eve", "h", acl::WRITE, T, "t"));
        assert!(t.authorize("User:eve", "h", acl::READ, T, "t"));
        assert!(!t.authorize("User:mal", "h", acl::READ, T, "t"));
    }

    #[test]
    fn describe_is_implied_and_host_must_match() {
        let t = AclTable::build(
            &on(false),
            vec![
                binding(
                    T,
                    "t",
                    PATTERN_LITERAL,
                    "User:w",
                    "10.0.0.1",
                    acl::WRITE,
                    PERMISSION_ALLOW,
                ),
                binding(
                    T,
                    "t",
                    PATTERN_LITERAL,
                    "User:c",
                    "*",
                    acl::ALTER_CONFIGS,
                    PERMISSION_ALLOW,
                ),
                binding(
                    T,
                    "t",
                    PATTERN_LITERAL,
                    "User:r",
                    "*",
                    acl::READ,
                    PERMISSION_ALLOW,
                ),
                binding(
                    T,
                    "t",
                    PATTERN_LITERAL,
                    "User:r",
                    "*",
                    acl::DESCRIBE,
                    PERMISSION_DENY,
                ),
            ],
        );
        assert!(t.authorize("User:w", "10.0.0.1", acl::DESCRIBE, T, "t"));
        assert!(t.authorize("User:w", "10.0.0.1", acl::WRITE, T, "t"));
        assert!(!t.authorize("User:w", "10.0.0.2", acl::WRITE, T, "t"));
        // The same client through a listener bound to [::].
        let mapped = peer_host("[::ffff:10.0.0.1]:5000");
        assert!(t.authorize("User:w", &mapped, acl::WRITE, T, "t"));
        assert!(t.authorize("User:c", "h", acl::DESCRIBE_CONFIGS, T, "t"));
        assert!(!t.authorize("User:c", "h", acl::DESCRIBE, T, "t"));
        // An explicit DENY DESCRIBE beats the DESCRIBE a READ implies.
        assert!(!t.authorize("User:r", "h", acl::DESCRIBE, T, "t"));
        assert!(t.authorize("User:r", "h", acl::READ, T, "t"));
    }

    #[test]
    fn any_resource_of_a_type_for_idempotent_producers() {
        let t = AclTable::build(
            &on(false),
            vec![
                binding(
                    T,
                    "logs-",
                    PATTERN_PREFIXED,
                    "User:w",
                    "*",
                    acl::WRITE,
                    PERMISSION_ALLOW,
                ),
                binding(
                    T,
                    "*",
                    PATTERN_LITERAL,
                    "User:d",
                    "*",
                    OP_ALL as u8,
                    PERMISSION_DENY,
                ),
                binding(
                    T,
                    "x",
                    PATTERN_LITERAL,
                    "User:d",
                    "*",
                    acl::WRITE,
                    PERMISSION_ALLOW,
                ),
            ],
        );
        assert!(t.authorize_any("User:w", "h", acl::WRITE, T));
        assert!(!t.authorize_any("User:w", "h", acl::READ, T));
        assert!(!t.authorize_any("User:d", "h", acl::WRITE, T));
        assert!(!t.authorize_any("User:n", "h", acl::WRITE, T));
        assert!(t.authorize_any("User:admin", "h", acl::WRITE, T));
        // A type without any entry follows allow-everyone.
        let lax = AclTable::build(&on(true), Vec::new());
        assert!(lax.authorize_any("User:n", "h", acl::WRITE, T));
        assert!(!AclTable::build(&on(false), Vec::new()).authorize_any(
            "User:n",
            "h",
            acl::WRITE,
            T
        ));
    }

    #[test]
    fn peer_hosts_drop_the_port() {
        assert_eq!(peer_host("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(peer_host("[::1]:5000"), "::1");
        // An IPv4 client of a listener bound to [::] is its IPv4 address.
        assert_eq!(peer_host("[::ffff:10.1.2.3]:5000"), "10.1.2.3");
        assert_eq!(peer_host("[2001:db8::1]:5000"), "2001:db8::1");
    }

    #[test]
    fn filters_follow_kafkas_pattern_rules() {
        let lit = binding(
            T,
            "orders",
            PATTERN_LITERAL,
            "User:a",
            "*",
            acl::READ,
            PERMISSION_ALLOW,
        );
        let star = binding(
            T,
            "*",
            PATTERN_LITERAL,
            "User:a",
            "*",
            acl::READ,
            PERMISSION_ALLOW,
        );
        let pre = binding(
            T,
            "ord",
            PATTERN_PREFIXED,
            "User:a",
            "*",
            acl::READ,
            PERMISSION_ALLOW,
        );
        let filter = |pattern: i8, name: Option<&str>| AclFilter {
            resource_type: RESOURCE_ANY,
            resource_name: name.map(String::from),
            pattern_type: pattern,
            principal: None,
            host: None,
            operation: OP_ANY,
            permission_type: PERMISSION_ANY,
        };
        let matched = |f: &AclFilter| [&lit, &star, &pre].map(|b| f.matches(b));
        assert_eq!(matched(&filter(PATTERN_ANY, None)), [true, true, true]);
        assert_eq!(
            matched(&filter(PATTERN_ANY, Some("orders"))),
            [true, false, false]
        );
        assert_eq!(
            matched(&filter(PATTERN_MATCH, Some("orders"))),
            [true, true, true]
        );
        assert_eq!(
            matched(&filter(PATTERN_MATCH, Some("x"))),
            [false, true, false]
        );
        assert_eq!(matched(&filter(PATTERN_LITERAL, None)), [true, true, false]);
        assert_eq!(
            matched(&filter(PATTERN_PREFIXED, Some("ord"))),
            [false, false, true]
        );
        let mut f = filter(PATTERN_ANY, None);
        f.principal = Some("User:b".into());
        assert_eq!(matched(&f), [false, false, false]);
        f.principal = None;
        f.operation = acl::WRITE as i8;
        assert_eq!(matched(&f), [false, false, false]);
    }

    #[test]
    fn creations_are_validated() {
        let ok = binding(
            T,
            "t",
            PATTERN_LITERAL,
            "User:a",
            "*",
            acl::READ,
            PERMISSION_ALLOW,
        );
        assert!(validate_new(&ok).is_ok());
        let bad = [
            AclBinding {
                pattern_type: PATTERN_MATCH,
                ..ok.clone()
            },
            AclBinding {
                pattern_type: PATTERN_ANY,
                ..ok.clone()
            },
            AclBinding {
                resource_type: RESOURCE_ANY,
                ..ok.clone()
            },
            AclBinding {
                operation: OP_ANY,
                ..ok.clone()
            },
            AclBinding {
                permission_type: PERMISSION_ANY,
                ..ok.clone()
            },
            AclBinding {
                principal: String::new(),
                ..ok.clone()
            },
            AclBinding {
                principal: "User:".into(),
                ..ok.clone()
            },
            AclBinding {
                resource_name: String::new(),
                ..ok.clone()
            },
            AclBinding {
                resource_type: resource::CLUSTER,
                resource_name: "c".into(),
                ..ok.clone()
            },
        ];
        for b in bad {
            assert!(validate_new(&b).is_err(), "{b:?}");
        }
    }
}
