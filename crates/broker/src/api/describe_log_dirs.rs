//! DescribeLogDirs: this broker has one log directory, the data directory. Each partition's
//! size is asked of the shard that owns it (one message per shard); there is never a future
//! replica or a lag behind a leader. v4 adds the file system's total and usable bytes.

use super::{decode_body, refuse_over, respond, Outcome};
use crate::errors;
use crate::limits::REQUEST_PARTITIONS_MAX;
use crate::shard;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use ringbroker_runtime::mesh;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// Which partitions to describe: `None` for all, else per topic the partitions named.
type Filter = Option<HashMap<String, HashSet<i32>>>;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: DescribeLogDirsRequest = decode_body(&mut req)?;
    let asked: usize = body
        .topics
        .iter()
        .flatten()
        .map(|t| t.partitions.len().max(1))
        .sum();
    refuse_over(
        "DescribeLogDirs",
        "partitions",
        asked,
        REQUEST_PARTITIONS_MAX,
    )?;
    // DESCRIBE on the cluster (v3+ carry CLUSTER_AUTHORIZATION_FAILED; older ones list
    // nothing, as Kafka answers them).
    if !crate::security::authorizer::on_cluster(conn, crate::acl::DESCRIBE) {
        let mut response = DescribeLogDirsResponse::default();
        if req.version >= 3 {
            response = response.with_error_code(errors::CLUSTER_AUTHORIZATION_FAILED);
        }
        return Ok(respond(&req, &response));
    }
    let filter: Arc<Filter> = Arc::new(body.topics.map(|topics| {
        let mut f: HashMap<String, HashSet<i32>> = HashMap::new();
        for t in topics {
            f.entry(t.topic.0.to_string())
                .or_default()
                .extend(t.partitions);
        }
        f
    }));
    let shard = shard::current();
    // topic -> partition -> size
    let mut sizes: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for s in 0..shard.shared.shard_count {
        let filter = filter.clone();
        let found = mesh::call(s, move || async move {
            let wanted = |topic: &str, p: i32| match &*filter {
                None => true,
                Some(f) => f.get(topic).is_some_and(|ps| ps.contains(&p)),
            };
            shard::current()
                .owned()
                .into_iter()
                .filter(|p| wanted(&p.topic, p.id.index))
                .map(|p| (p.topic.clone(), p.id.index, p.log.size_bytes() as i64))
                .collect::<Vec<_>>()
        })
        .await;
        for (topic, index, size) in found {
            sizes.entry(topic).or_default().insert(index, size);
        }
    }
    let topics = sizes
        .into_iter()
        .map(|(name, partitions)| {
            DescribeLogDirsTopic::default()
                .with_name(TopicName(StrBytes::from_string(name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, size)| {
                            DescribeLogDirsPartition::default()
                                .with_partition_index(index)
                                .with_partition_size(size)
                                .with_offset_lag(0)
                                .with_is_future_key(false)
                        })
                        .collect(),
                )
        })
        .collect();
    let data_dir = &shard.shared.config.data_dir;
    let log_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.clone());
    let mut result = DescribeLogDirsResult::default()
        .with_error_code(errors::NONE)
        .with_log_dir(StrBytes::from_string(log_dir.display().to_string()))
        .with_topics(topics);
    if req.version >= 4 {
        let (total, usable) = disk_bytes(data_dir).unwrap_or((-1, -1));
        result = result.with_total_bytes(total).with_usable_bytes(usable);
    }
    Ok(respond(
        &req,
        &DescribeLogDirsResponse::default().with_results(vec![result]),
    ))
}

/// Total and usable (available to unprivileged users) bytes of the file system holding
/// `dir` (one `statvfs`, a metadata call).
fn disk_bytes(dir: &Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `st` points to
    // writable memory the size of a `statvfs`, which the kernel fills on success.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize as i64;
    Some((
        (st.f_blocks as i64).saturating_mul(frsize),
        (st.f_bavail as i64).saturating_mul(frsize),
    ))
}

impl crate::stats::ErrorCodes for DescribeLogDirsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        f(self.error_code);
        self.results.iter().for_each(|r| f(r.error_code));
    }
}
