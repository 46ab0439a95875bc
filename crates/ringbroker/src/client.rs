//! A minimal Kafka client shared by the load generator (`ringbroker bench`) and the admin CLI
//! (`ringbroker topic|group|cluster|produce|consume`): requests encoded and responses decoded
//! with the `kafka-protocol` crate, sockets driven by this thread's ring (`runtime::op`).
//!
//! [`Client::version`] negotiates with ApiVersions: the highest version both sides support.
//!
//! Produce requests never copy their record batch: the request is encoded through
//! `protocol::gather::GatherBuf` with a placeholder where the batch goes, and the pieces go
//! out with one `sendmsg` whose iovecs point at the header bytes and at the shared batch
//! (over TLS the same pieces are encrypted into TLS records instead: [`transport`]).
//! Everything read from the network is checked; a bad answer is an error, never a panic.
//!
//! Secured brokers ([`security`]): a connection is opened over TLS ([`transport`]) when the
//! security protocol says so, and on SASL_PLAINTEXT / SASL_SSL it authenticates (ApiVersions,
//! SaslHandshake v1, SaslAuthenticate; [`sasl`]) before [`Client::connect_as`] returns it.

pub mod sasl;
pub mod security;
pub mod transport;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    create_topics_request::CreatableTopic, fetch_request::FetchPartition,
    fetch_request::FetchTopic, list_offsets_request::ListOffsetsPartition,
    list_offsets_request::ListOffsetsTopic, metadata_request::MetadataRequestTopic,
    produce_request::PartitionProduceData, produce_request::TopicProduceData, ApiKey,
    ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use ringbroker_protocol::frame::{self, Next};
use ringbroker_protocol::gather::{self, GatherBuf, Piece};
use ringbroker_runtime::op::{self, SharedFd};
pub use security::{ClientSecurity, SecurityArgs};
use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use transport::Transport;

pub const PRODUCE_VERSION: i16 = 9;
pub const FETCH_VERSION: i16 = 12;
pub const LIST_OFFSETS_VERSION: i16 = 6;
pub const METADATA_VERSION: i16 = 12;
pub const CREATE_TOPICS_VERSION: i16 = 5;
pub const DELETE_TOPICS_VERSION: i16 = 4;

/// Largest response frame accepted (a Fetch answer is bounded by the request's max_bytes).
pub const RESPONSE_BYTES_MAX: usize = 256 << 20;
/// How long a request may wait for its answer before the run fails.
pub const RESPONSE_WAIT_MAX: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "ringbroker-bench";
/// The client id of the admin CLI's requests.
pub const CLI_CLIENT_ID: &str = "ringbroker-cli";
/// ApiVersions version asked first; a broker that lacks it answers UNSUPPORTED_VERSION (in
/// the v0 layout) and the request is repeated at v0.
const API_VERSIONS_VERSION: i16 = 3;

/// ListOffsets timestamps.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

/// RecordBatch v2 field positions (see `ringbroker_protocol::batch`).
pub const BATCH_HEADER_BYTES: usize = ringbroker_protocol::batch::HEADER_BYTES;
const CRC_POS: usize = 17;
const ATTRIBUTES_POS: usize = 21;
const LAST_OFFSET_DELTA_POS: usize = 23;
const FIRST_TIMESTAMP_POS: usize = 27;
const MAX_TIMESTAMP_POS: usize = 35;
const RECORDS_COUNT_POS: usize = 57;

/// Opens a TCP connection (a plain blocking connect; the socket then belongs to the ring).
pub fn connect(addr: &str) -> Result<SharedFd> {
    let mut last = None;
    let addrs = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?;
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
            Ok(s) => {
                s.set_nodelay(true).context("TCP_NODELAY")?;
                return Ok(Arc::new(OwnedFd::from(s)));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => anyhow!(e).context(format!("connecting to {addr}")),
        None => anyhow!("{addr} resolves to no address"),
    })
}

/// The broker closed the connection (TCP EOF) while an answer was awaited.
#[derive(Debug)]
pub struct BrokerClosed;

impl std::fmt::Display for BrokerClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the broker closed the connection")
    }
}

impl std::error::Error for BrokerClosed {}

/// Splits response frames off a connection.
pub struct FrameReader {
    conn: Rc<Transport>,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(conn: Rc<Transport>) -> FrameReader {
        FrameReader {
            conn,
            buf: BytesMut::with_capacity(256 << 10),
        }
    }

    /// The next whole frame body (size prefix removed).
    pub async fn next(&mut self) -> Result<Bytes> {
        loop {
            match frame::next_frame(&mut self.buf, RESPONSE_BYTES_MAX)
                .map_err(|e| anyhow!("bad response frame: {e}"))?
            {
                Next::Frame(body) => return Ok(body),
                Next::NeedMore { total } => {
                    let want = total.unwrap_or(0).max(self.buf.len() + (64 << 10));
                    if self.buf.capacity() < want {
                        self.buf.reserve(want - self.buf.len());
                    }
                }
            }
            let buf = std::mem::take(&mut self.buf);
            let (result, buf) = op::timeout(RESPONSE_WAIT_MAX, self.conn.recv(buf))
                .await
                .ok_or_else(|| anyhow!("no answer from the broker within {RESPONSE_WAIT_MAX:?}"))?;
            self.buf = buf;
            if result.context("receiving from the broker")? == 0 {
                return Err(BrokerClosed.into());
            }
        }
    }
}

/// Encodes a request frame (size prefix included) as pieces to send in order; each
/// `records` placeholder in `request` is replaced, in order, by the next of `records`.
pub fn encode_request<Req: Encodable>(
    client_id: &'static str,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &Req,
    records: &[Bytes],
) -> Result<Vec<Bytes>> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(client_id)));
    let mut buf = GatherBuf::with_capacity(256);
    bytes::BufMut::put_i32(&mut buf, 0);
    header
        .encode(&mut buf, api.request_header_version(version))
        .map_err(|e| anyhow!("encoding the {api:?} request header: {e}"))?;
    request
        .encode(&mut buf, version)
        .map_err(|e| anyhow!("encoding {api:?} v{version}: {e}"))?;
    let pieces = buf.finish();
    let total: usize = pieces
        .iter()
        .map(|p| match p {
            Piece::Mem(b) => b.len(),
            Piece::Hole(n) => *n,
        })
        .sum();
    let body_len = i32::try_from(total - 4).context("request larger than 2 GiB")?;
    let mut records = records.iter();
    let mut out = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.into_iter().enumerate() {
        match piece {
            Piece::Mem(b) if i == 0 => {
                // The size prefix sits at the start of the first piece.
                let mut first = BytesMut::from(&b[..]);
                first[..4].copy_from_slice(&body_len.to_be_bytes());
                out.push(first.freeze());
            }
            Piece::Mem(b) => out.push(b),
            Piece::Hole(n) => {
                let r = records
                    .next()
                    .context("more record placeholders than record sections")?;
                debug_assert_eq!(r.len(), n);
                out.push(r.clone());
            }
        }
    }
    Ok(out)
}

/// Decodes a response frame, checking its correlation id.
pub fn decode_response<Resp: Decodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    mut frame: Bytes,
) -> Result<Resp> {
    let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
        .map_err(|e| anyhow!("decoding the {api:?} response header: {e}"))?;
    if header.correlation_id != correlation_id {
        bail!(
            "{api:?} answer carries correlation id {}, expected {correlation_id}",
            header.correlation_id
        );
    }
    Resp::decode(&mut frame, version)
        .map_err(|e| anyhow!("decoding the {api:?} v{version} answer: {e}"))
}

/// A Kafka error code as a readable error.
pub fn kafka_error(code: i16) -> anyhow::Error {
    match ResponseError::try_from_code(code) {
        Some(e) => anyhow!("{e:?} (error code {code})"),
        None => anyhow!("error code {code}"),
    }
}

/// One request at a time on one connection: the control plane (metadata, topics, offsets)
/// and the consumer's fetch loop.
pub struct Client {
    pub conn: Rc<Transport>,
    /// host:port this connection went to (named in errors).
    pub addr: String,
    reader: FrameReader,
    correlation_id: i32,
    client_id: &'static str,
    /// What the broker advertised in ApiVersions: key → (min, max); asked on first use.
    api_versions: Option<BTreeMap<i16, (i16, i16)>>,
    /// SASL identity, kept to re-authenticate (KIP-368) when the broker limits sessions.
    credentials: Option<security::SaslCredentials>,
    /// When to re-authenticate (before the broker's session lifetime ends); `None`: never.
    reauthenticate_at: Option<std::time::Instant>,
}

impl Client {
    /// Connects as the load generator (see [`Client::connect_as`]).
    pub async fn connect(addr: &str, security: &ClientSecurity) -> Result<Client> {
        Client::connect_as(addr, CLIENT_ID, security).await
    }

    /// Connects, naming itself `client_id` in every request header: TCP, then the TLS
    /// handshake and SASL authentication when `security` asks for them.
    pub async fn connect_as(
        addr: &str,
        client_id: &'static str,
        security: &ClientSecurity,
    ) -> Result<Client> {
        let fd = connect(addr)?;
        let conn = Rc::new(transport::open(fd, addr, security).await?);
        let mut client = Client {
            reader: FrameReader::new(conn.clone()),
            conn,
            addr: addr.to_string(),
            correlation_id: 0,
            client_id,
            api_versions: None,
            credentials: security.sasl.clone(),
            reauthenticate_at: None,
        };
        if let Some(credentials) = &security.sasl {
            let lifetime = sasl::authenticate(&mut client, credentials).await?;
            client.reauthenticate_at = lifetime.map(sasl::reauthenticate_after);
        }
        Ok(client)
    }

    /// The versions of each API the broker advertises (ApiVersions, asked once).
    pub async fn api_versions(&mut self) -> Result<&BTreeMap<i16, (i16, i16)>> {
        if self.api_versions.is_none() {
            let mut version = API_VERSIONS_VERSION;
            let mut response = self.ask_api_versions(version).await?;
            if response.error_code == 35 {
                // UNSUPPORTED_VERSION: the answer lists the broker's ApiVersions versions; ask
                // again at the highest one both sides have, as Kafka's clients do.
                version = response
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map_or(0, |k| k.max_version.clamp(0, API_VERSIONS_VERSION));
                response = self.ask_api_versions(version).await?;
            }
            if response.error_code != 0 {
                return Err(kafka_error(response.error_code)
                    .context(format!("ApiVersions v{version} to {}", self.addr)));
            }
            self.api_versions = Some(
                response
                    .api_keys
                    .iter()
                    .map(|k| (k.api_key, (k.min_version, k.max_version)))
                    .collect(),
            );
        }
        Ok(self.api_versions.get_or_insert_with(BTreeMap::new))
    }

    /// One ApiVersions request. A broker that lacks `version` answers UNSUPPORTED_VERSION in
    /// the v0 layout (both layouts start with the error code, after a v0 header).
    async fn ask_api_versions(&mut self, version: i16) -> Result<ApiVersionsResponse> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("ringbroker"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let frame = self
            .call_frame(ApiKey::ApiVersions, version, &request)
            .await?;
        let error_code = frame.get(4..6).map(|b| i16::from_be_bytes([b[0], b[1]]));
        let layout = if error_code == Some(35) { 0 } else { version };
        decode_response(ApiKey::ApiVersions, layout, self.correlation_id, frame)
    }

    /// Whether the broker advertises `api` at all.
    pub async fn supports(&mut self, api: ApiKey) -> Result<bool> {
        Ok(self.api_versions().await?.contains_key(&(api as i16)))
    }

    /// The highest version of `api` both this client (`ours`, inclusive) and the broker
    /// support; an error naming the API when there is none.
    pub async fn version(&mut self, api: ApiKey, ours: (i16, i16)) -> Result<i16> {
        let addr = self.addr.clone();
        let Some(&(min, max)) = self.api_versions().await?.get(&(api as i16)) else {
            bail!(
                "the broker at {addr} does not support {api:?} (API key {}), which this command needs",
                api as i16
            );
        };
        let version = max.min(ours.1);
        if version < min.max(ours.0) {
            bail!(
                "the broker at {addr} supports {api:?} v{min} to v{max}, this client v{} to v{}: no common version",
                ours.0,
                ours.1
            );
        }
        Ok(version)
    }

    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp> {
        let frame = self.call_frame(api, version, request).await?;
        decode_response(api, version, self.correlation_id, frame)
    }

    /// Sends a request and returns its answer's frame, not yet decoded.
    async fn call_frame<Req: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Bytes> {
        if !matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        ) {
            self.reauthenticate_if_due().await?;
        }
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let pieces = encode_request(
            self.client_id,
            api,
            version,
            self.correlation_id,
            request,
            &[],
        )?;
        self.conn
            .send(pieces)
            .await
            .with_context(|| format!("sending {api:?}"))?;
        let answer = self.reader.next().await;
        let closed = answer
            .as_ref()
            .is_err_and(|e| e.downcast_ref::<BrokerClosed>().is_some());
        if closed && self.credentials.is_none() {
            // A SASL listener closes a connection whose first request is not SASL's.
            return answer.context(
                "no SASL credentials given: if this is a SASL_PLAINTEXT or SASL_SSL listener, add --security-protocol, --sasl-user and --sasl-password-file",
            );
        }
        answer
    }

    /// KIP-368: a broker with `connections.max.reauth.ms` closes a connection whose SASL
    /// session ended; re-authenticate on this connection before that (one request at a time
    /// here, so nothing is in flight meanwhile).
    async fn reauthenticate_if_due(&mut self) -> Result<()> {
        let due = self
            .reauthenticate_at
            .is_some_and(|at| std::time::Instant::now() >= at);
        if !due {
            return Ok(());
        }
        let Some(credentials) = self.credentials.clone() else {
            return Ok(());
        };
        let lifetime = Box::pin(sasl::authenticate(self, &credentials))
            .await
            .context("re-authenticating (the broker's SASL session lifetime ended)")?;
        self.reauthenticate_at = lifetime.map(sasl::reauthenticate_after);
        Ok(())
    }

    /// Sends a request that gets no answer (Produce with acks=0).
    pub async fn send_only<Req: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<()> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let pieces = encode_request(
            self.client_id,
            api,
            version,
            self.correlation_id,
            request,
            &[],
        )?;
        self.conn
            .send(pieces)
            .await
            .with_context(|| format!("sending {api:?}"))
    }
}

/// Where a topic's partitions are.
#[derive(Debug, Clone)]
pub struct TopicLayout {
    /// (partition, leader address host:port), by partition.
    pub partitions: Vec<(i32, String)>,
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// The topic's partitions and leaders; `None` if the broker does not know the topic.
pub async fn describe_topic(client: &mut Client, topic: &str) -> Result<Option<TopicLayout>> {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
        ]))
        .with_allow_auto_topic_creation(false);
    let response: MetadataResponse = client
        .call(ApiKey::Metadata, METADATA_VERSION, &request)
        .await?;
    let brokers: BTreeMap<i32, String> = response
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let Some(t) = response
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
    else {
        bail!("Metadata answer does not mention topic {topic:?}");
    };
    match t.error_code {
        0 => {}
        3 => return Ok(None), // UNKNOWN_TOPIC_OR_PARTITION
        5 => return Ok(Some(TopicLayout { partitions: vec![] })), // LEADER_NOT_AVAILABLE: creating
        code => return Err(kafka_error(code).context(format!("Metadata for topic {topic:?}"))),
    }
    let mut partitions = Vec::new();
    for p in &t.partitions {
        if p.error_code != 0 || p.leader_id.0 < 0 {
            return Ok(Some(TopicLayout { partitions: vec![] }));
        }
        let leader = brokers.get(&p.leader_id.0).with_context(|| {
            format!(
                "partition {} of {topic:?} is led by broker {} that Metadata does not list",
                p.partition_index, p.leader_id.0
            )
        })?;
        partitions.push((p.partition_index, leader.clone()));
    }
    partitions.sort();
    Ok(Some(TopicLayout { partitions }))
}

/// Describes the topic, creating it with `partitions` partitions if it does not exist, and
/// waits (bounded) until every partition has a leader.
pub async fn ensure_topic(
    client: &mut Client,
    topic: &str,
    partitions: i32,
) -> Result<TopicLayout> {
    if describe_topic(client, topic).await?.is_none() {
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1)])
            .with_timeout_ms(30_000);
        let response: CreateTopicsResponse = client
            .call(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, &request)
            .await?;
        for t in &response.topics {
            // 36 = TOPIC_ALREADY_EXISTS: someone else created it meanwhile.
            if t.error_code != 0 && t.error_code != 36 {
                let message = t
                    .error_message
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                return Err(kafka_error(t.error_code)
                    .context(format!("creating topic {topic:?}: {message}")));
            }
        }
    }
    for _ in 0..100 {
        if let Some(layout) = describe_topic(client, topic).await? {
            if !layout.partitions.is_empty() {
                if layout.partitions.len() as i32 != partitions {
                    eprintln!(
                        "bench: topic {topic:?} exists with {} partitions (asked for {partitions}); using them",
                        layout.partitions.len()
                    );
                }
                return Ok(layout);
            }
        }
        op::sleep(Duration::from_millis(100)).await;
    }
    bail!("topic {topic:?} has no leader for every partition after 10 s")
}

/// Deletes `topics`; a topic that does not exist is not an error.
pub async fn delete_topics(client: &mut Client, topics: &[String]) -> Result<()> {
    let request = DeleteTopicsRequest::default()
        .with_topic_names(topics.iter().map(|t| topic_name(t)).collect())
        .with_timeout_ms(30_000);
    let response: DeleteTopicsResponse = client
        .call(ApiKey::DeleteTopics, DELETE_TOPICS_VERSION, &request)
        .await?;
    for r in &response.responses {
        // 3 = UNKNOWN_TOPIC_OR_PARTITION: already gone.
        if r.error_code != 0 && r.error_code != 3 {
            return Err(kafka_error(r.error_code).context(format!("deleting topic {:?}", r.name)));
        }
    }
    Ok(())
}

/// Waits (bounded) until the broker behind `client` knows the topic and a leader for each
/// of its partitions. A new topic may reach the broker's other threads (or brokers) a
/// moment after CreateTopics returned; Kafka clients retry for the same reason.
pub async fn wait_for_topic(client: &mut Client, topic: &str) -> Result<()> {
    for _ in 0..100 {
        if describe_topic(client, topic)
            .await?
            .is_some_and(|l| !l.partitions.is_empty())
        {
            return Ok(());
        }
        op::sleep(Duration::from_millis(100)).await;
    }
    bail!("topic {topic:?} is still unknown to a connection after 10 s")
}

/// ListOffsets (`LATEST` or `EARLIEST`) for `partitions` of `topic`: (partition, offset).
pub async fn list_offsets(
    client: &mut Client,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<Vec<(i32, i64)>> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&p| {
                        ListOffsetsPartition::default()
                            .with_partition_index(p)
                            .with_timestamp(timestamp)
                    })
                    .collect(),
            )]);
    let response: ListOffsetsResponse = client
        .call(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request)
        .await?;
    let mut out = Vec::new();
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(kafka_error(p.error_code)
                    .context(format!("ListOffsets for {topic:?}-{}", p.partition_index)));
            }
            out.push((p.partition_index, p.offset));
        }
    }
    if out.len() != partitions.len() {
        bail!(
            "ListOffsets answered {} partitions of {topic:?}, asked for {}",
            out.len(),
            partitions.len()
        );
    }
    Ok(out)
}

/// A Produce request carrying `batch` for one partition, as pieces to send (the batch is
/// not copied).
pub fn produce_request(
    topic: &TopicName,
    partition: i32,
    acks: i16,
    correlation_id: i32,
    batch: &Bytes,
) -> Result<Vec<Bytes>> {
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic.clone())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(gather::placeholder(batch.len())?))])]);
    encode_request(
        CLIENT_ID,
        ApiKey::Produce,
        PRODUCE_VERSION,
        correlation_id,
        &request,
        std::slice::from_ref(batch),
    )
}

/// Checks a Produce answer: every partition acknowledged without error.
pub fn check_produce_response(frame: Bytes, correlation_id: i32) -> Result<()> {
    let response: ProduceResponse =
        decode_response(ApiKey::Produce, PRODUCE_VERSION, correlation_id, frame)?;
    let mut answered = 0;
    for t in &response.responses {
        for p in &t.partition_responses {
            answered += 1;
            if p.error_code != 0 {
                let message = p
                    .error_message
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                return Err(kafka_error(p.error_code).context(format!(
                    "Produce to {}-{} failed {message}",
                    t.name.0.as_str(),
                    p.index
                )));
            }
        }
    }
    if answered == 0 {
        bail!("Produce answer acknowledges no partition");
    }
    Ok(())
}

/// A Fetch request for `(partition, offset)` pairs of one topic.
pub fn fetch_request(
    topic: &TopicName,
    offsets: &[(i32, i64)],
    max_wait_ms: i32,
    partition_max_bytes: i32,
    max_bytes: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic.clone())
            .with_partitions(
                offsets
                    .iter()
                    .map(|&(p, offset)| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(partition_max_bytes)
                    })
                    .collect(),
            )])
}

/// What one partition of a Fetch answer held.
pub struct FetchedPartition {
    pub partition: i32,
    pub records: Bytes,
    pub high_watermark: i64,
}

pub async fn fetch(client: &mut Client, request: &FetchRequest) -> Result<Vec<FetchedPartition>> {
    let response: FetchResponse = client.call(ApiKey::Fetch, FETCH_VERSION, request).await?;
    if response.error_code != 0 {
        return Err(kafka_error(response.error_code).context("Fetch"));
    }
    let mut out = Vec::new();
    for t in response.responses {
        for p in t.partitions {
            if p.error_code != 0 {
                return Err(kafka_error(p.error_code)
                    .context(format!("Fetch from partition {}", p.partition_index)));
            }
            out.push(FetchedPartition {
                partition: p.partition_index,
                records: p.records.unwrap_or_default(),
                high_watermark: p.high_watermark,
            });
        }
    }
    Ok(out)
}

/// The whole batches at the start of a record section.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchScan {
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
    /// Offset after the last whole batch, if there was one.
    pub next_offset: Option<i64>,
}

/// Counts the whole v2 batches of a Fetch record section.
pub fn scan_batches(records: &[u8]) -> Result<BatchScan> {
    let mut scan = BatchScan::default();
    for batch in whole_batches(records)? {
        let base_offset = read_i64(batch, 0);
        let last_delta = read_i32(batch, LAST_OFFSET_DELTA_POS);
        scan.batches += 1;
        scan.records += read_i32(batch, RECORDS_COUNT_POS).max(0) as u64;
        scan.bytes += batch.len() as u64;
        scan.next_offset = Some(base_offset + last_delta as i64 + 1);
    }
    Ok(scan)
}

/// The whole v2 batches of a Fetch record section, in order (a trailing partial batch, which
/// brokers may send, is left for the next fetch).
pub fn whole_batches(records: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = records;
    while rest.len() >= BATCH_HEADER_BYTES {
        let base_offset = read_i64(rest, 0);
        let length = read_i32(rest, 8);
        if length < (BATCH_HEADER_BYTES - 12) as i32 {
            bail!("record batch at offset {base_offset} has invalid length {length}");
        }
        let total = 12 + length as usize;
        if rest.len() < total {
            break;
        }
        if rest[16] != 2 {
            bail!(
                "record batch at offset {base_offset} has magic {} (only v2 is read)",
                rest[16]
            );
        }
        out.push(&rest[..total]);
        rest = &rest[total..];
    }
    Ok(out)
}

/// Big-endian integers of a batch header (callers have checked that the header is whole).
fn read_i32(b: &[u8], at: usize) -> i32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, i32::from_be_bytes)
}

fn read_i64(b: &[u8], at: usize) -> i64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, i64::from_be_bytes)
}

/// An uncompressed batch of `count` records of `record_bytes` each, built once and re-stamped
/// per send when the values must carry their send time.
pub struct BatchTemplate {
    bytes: Vec<u8>,
    /// Position of each value in `bytes`.
    value_positions: Vec<usize>,
    pub records: usize,
    pub value_bytes: usize,
}

impl BatchTemplate {
    pub fn new(count: usize, record_bytes: usize, seed: u64) -> BatchTemplate {
        // Incompressible values, different per connection.
        let mut x = seed | 1;
        let value: Vec<u8> = (0..record_bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let values: Vec<&[u8]> = (0..count).map(|_| value.as_slice()).collect();
        let bytes = ringbroker_protocol::batch::build_batch(0, wall_ms(), &values);
        let value_positions = ringbroker_protocol::batch::record_values(&bytes)
            .iter()
            .map(|v| v.as_ptr() as usize - bytes.as_ptr() as usize)
            .collect::<Vec<_>>();
        debug_assert_eq!(value_positions.len(), count);
        BatchTemplate {
            bytes,
            value_positions,
            records: count,
            value_bytes: count * record_bytes,
        }
    }

    /// The batch as built (its timestamps are those of its creation).
    pub fn frozen(&self) -> Bytes {
        Bytes::copy_from_slice(&self.bytes)
    }

    /// A copy whose timestamps are `wall_ns` and whose values start with it (big-endian u64
    /// nanoseconds since the Unix epoch), CRC recomputed.
    pub fn stamped(&self, wall_ns: u64) -> Bytes {
        let mut b = BytesMut::from(&self.bytes[..]);
        let ms = (wall_ns / 1_000_000) as i64;
        b[FIRST_TIMESTAMP_POS..FIRST_TIMESTAMP_POS + 8].copy_from_slice(&ms.to_be_bytes());
        b[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&ms.to_be_bytes());
        if self.value_bytes / self.records.max(1) >= 8 {
            for &pos in &self.value_positions {
                b[pos..pos + 8].copy_from_slice(&wall_ns.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&b[ATTRIBUTES_POS..]);
        b[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        b.freeze()
    }
}

/// The send times carried by the values of a whole uncompressed batch.
pub fn value_stamps(batch: &[u8]) -> impl Iterator<Item = u64> + '_ {
    ringbroker_protocol::batch::record_values(batch)
        .into_iter()
        .filter_map(|v| {
            v.get(..8)
                .map(|s| u64::from_be_bytes(s.try_into().unwrap_or_default()))
        })
}

pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn wall_ms() -> i64 {
    (wall_ns() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_batches_validate_and_carry_their_stamp() {
        let t = BatchTemplate::new(10, 100, 7);
        let b = t.stamped(1_234_567_890_123);
        ringbroker_protocol::batch::validate_produced(&b).expect("valid batch");
        assert!(value_stamps(&b).all(|s| s == 1_234_567_890_123));
        assert_eq!(value_stamps(&b).count(), 10);
        ringbroker_protocol::batch::validate_produced(&t.frozen()).expect("valid template");
    }

    #[test]
    fn scan_counts_whole_batches_and_leaves_a_partial_one() {
        let t = BatchTemplate::new(3, 10, 1);
        let mut a = t.stamped(1).to_vec();
        a[0..8].copy_from_slice(&5i64.to_be_bytes());
        let mut two = a.clone();
        let mut b = t.stamped(2).to_vec();
        b[0..8].copy_from_slice(&8i64.to_be_bytes());
        two.extend_from_slice(&b);
        two.extend_from_slice(&b[..30]);
        let scan = scan_batches(&two).unwrap();
        assert_eq!(scan.batches, 2);
        assert_eq!(scan.records, 6);
        assert_eq!(scan.next_offset, Some(11));
        assert!(scan_batches(&[0u8; 70]).is_err());
    }

    #[test]
    fn produce_request_pieces_equal_a_plain_encode() {
        let batch = BatchTemplate::new(4, 50, 3).frozen();
        let topic = topic_name("t");
        let pieces = produce_request(&topic, 2, 1, 42, &batch).unwrap();
        let wire: Vec<u8> = pieces.iter().flat_map(|b| b.iter().copied()).collect();
        let request = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic)
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(2)
                    .with_records(Some(batch.clone()))])]);
        let mut plain = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(PRODUCE_VERSION)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
            .encode(
                &mut plain,
                ApiKey::Produce.request_header_version(PRODUCE_VERSION),
            )
            .unwrap();
        request.encode(&mut plain, PRODUCE_VERSION).unwrap();
        assert_eq!(&wire[4..], &plain[..]);
        assert_eq!(
            i32::from_be_bytes(wire[..4].try_into().unwrap()) as usize,
            plain.len()
        );
    }
}
