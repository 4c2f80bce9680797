//! Encoding and decoding of requests and responses, on top of [`crate::frame`].
//!
//! Decoding is two steps and never reads a field before both pass: the flatbuffers verifier (with
//! depth, table and size limits), then our own limits ([`check_request`]: counts of topics and
//! partitions, string lengths, blob sizes). Every failure is a [`ProtocolError`] that maps to a
//! wire [`ErrorCode`]; nothing panics on bad bytes.
//!
//! Owned request/response types (`RequestT`, `ResponseT`, ...) come from flatc's object API;
//! hot paths use the zero-copy views (`Request<'_>`, `ProduceRequest<'_>`) instead.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, Vector, VerifierOptions};

use crate::frame::{self, FrameError};
use crate::limits;
use crate::wire::{self, ApiKey, ErrorCode, RequestBody, RequestT, ResponseT};

/// Why an inbound buffer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("malformed flatbuffer: {0}")]
    Malformed(String),
    #[error("request has no body")]
    MissingBody,
    #[error("{what} is {value} bytes; the limit is {max}")]
    TooLarge { what: &'static str, value: usize, max: usize },
    #[error("{what}: {value} entries; the limit is {max}")]
    TooMany { what: &'static str, value: usize, max: usize },
    #[error("{api:?} version {version} is not supported (supported: {min}..={max})")]
    UnsupportedVersion { api: ApiKey, version: u16, min: u16, max: u16 },
    #[error("fetch payload is {actual} bytes but the header declares {declared}")]
    PayloadMismatch { declared: usize, actual: usize },
}

impl ProtocolError {
    /// The wire error code to answer with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProtocolError::Frame(FrameError::TooLarge { .. }) | ProtocolError::TooLarge { .. } => {
                ErrorCode::MessageTooLarge
            }
            ProtocolError::TooMany { .. } => ErrorCode::InvalidRequest,
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::CorruptMessage,
        }
    }
}

/// The API versions this code speaks: `(api, min, max)`. Every API is at version 0 so far.
pub const SUPPORTED_APIS: [(ApiKey, u16, u16); 21] = [
    (ApiKey::Handshake, 0, 0),
    (ApiKey::Metadata, 0, 0),
    (ApiKey::CreateTopics, 0, 0),
    (ApiKey::DeleteTopics, 0, 0),
    (ApiKey::DescribeConfigs, 0, 0),
    (ApiKey::AlterConfigs, 0, 0),
    (ApiKey::Produce, 0, 0),
    (ApiKey::Fetch, 0, 0),
    (ApiKey::ListOffsets, 0, 0),
    (ApiKey::OffsetCommit, 0, 0),
    (ApiKey::OffsetFetch, 0, 0),
    (ApiKey::FindCoordinator, 0, 0),
    (ApiKey::JoinGroup, 0, 0),
    (ApiKey::SyncGroup, 0, 0),
    (ApiKey::Heartbeat, 0, 0),
    (ApiKey::LeaveGroup, 0, 0),
    (ApiKey::ListGroups, 0, 0),
    (ApiKey::DescribeGroups, 0, 0),
    (ApiKey::DeleteGroups, 0, 0),
    (ApiKey::InitProducerId, 0, 0),
    (ApiKey::RegisterBroker, 0, 0),
];

/// The API a request body belongs to. Union tags are the API key plus one (0 is NONE).
pub fn api_key(body: RequestBody) -> Option<ApiKey> {
    (body.0 >= 1 && body.0 <= RequestBody::ENUM_MAX).then(|| ApiKey(u16::from(body.0) - 1))
}

/// Whether a client should retry an operation that failed with `code` (after a backoff, and for
/// some, a metadata refresh).
pub fn is_retriable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::UnknownTopicOrPartition
            | ErrorCode::NotLeader
            | ErrorCode::RequestTimedOut
            | ErrorCode::Busy
            | ErrorCode::ShuttingDown
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::CoordinatorNotAvailable
            | ErrorCode::NotCoordinator
            | ErrorCode::DiskFull
    )
}

/// Whether `code` means the client's metadata is stale.
pub fn needs_metadata_refresh(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::UnknownTopicOrPartition | ErrorCode::NotLeader | ErrorCode::NotCoordinator
    )
}

fn verifier_options() -> VerifierOptions {
    VerifierOptions {
        max_depth: limits::VERIFIER_DEPTH_MAX,
        max_tables: limits::VERIFIER_TABLES_MAX,
        max_apparent_size: limits::FRAME_BYTES_MAX,
        ignore_missing_null_terminator: false,
    }
}

/// Verifies a request header and checks our limits. The returned view reads straight from
/// `header`.
pub fn decode_request(header: &[u8]) -> Result<wire::Request<'_>, ProtocolError> {
    let request = flatbuffers::root_with_opts::<wire::Request>(&verifier_options(), header)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    check_request(&request)?;
    Ok(request)
}

/// Verifies a response header. The returned view reads straight from `header`.
pub fn decode_response(header: &[u8]) -> Result<wire::Response<'_>, ProtocolError> {
    flatbuffers::root_with_opts::<wire::Response>(&verifier_options(), header)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Encodes a request into a whole frame.
pub fn encode_request(request: &RequestT) -> Result<BytesMut, ProtocolError> {
    let mut builder = FlatBufferBuilder::with_capacity(1024);
    let root = request.pack(&mut builder);
    builder.finish_minimal(root);
    into_frame(builder)
}

/// Encodes a response header into a frame prefix plus header, to be followed on the wire by
/// `payload_bytes` of raw batches (fetch) or nothing.
pub fn encode_response(
    response: &ResponseT,
    payload_bytes: usize,
) -> Result<BytesMut, ProtocolError> {
    let mut builder = FlatBufferBuilder::with_capacity(256);
    let root = response.pack(&mut builder);
    builder.finish_minimal(root);
    let header = builder.finished_data();
    let mut out = BytesMut::with_capacity(frame::PREFIX_BYTES + header.len());
    out.put_slice(&frame::prefix(header.len(), payload_bytes)?);
    out.put_slice(header);
    Ok(out)
}

/// One partition's batches in a produce request under construction.
pub struct ProducePartitionInput<'a> {
    pub partition: i32,
    /// Whole batches, back to back.
    pub records: &'a [u8],
}

/// Encodes a produce request straight from batch slices (one copy, into the builder), without
/// going through the object API's owned vectors.
/// The finished flatbuffer as a whole frame. The builder fills its buffer from the back, so
/// the length prefix usually fits in the room before the data: the frame is then the builder's
/// own buffer, not a copy of it (a produce request carries its batches inside, so the copy
/// was a second pass over every produced byte).
fn into_frame(builder: FlatBufferBuilder) -> Result<BytesMut, ProtocolError> {
    let (mut buffer, head) = builder.collapse();
    let length = buffer.len() - head;
    let prefix = frame::prefix(length, 0)?;
    if head < frame::PREFIX_BYTES {
        return Ok(frame::encode(&buffer[head..])?);
    }
    let start = head - frame::PREFIX_BYTES;
    buffer[start..head].copy_from_slice(&prefix);
    // A Bytes made from a Vec is its sole owner, so it converts back without a copy.
    let mut out = Bytes::from(buffer).try_into_mut().expect("the only reference");
    out.advance(start);
    Ok(out)
}

/// Bytes a produce request's builder needs, frame prefix included, so that it never grows (a
/// grow zero-fills and copies the whole buffer: with 5,000 one-record batches a request is
/// ~1.2 MB of batches and ~200 KB of per-partition tables) and the frame is the builder's own
/// buffer. Per partition: its table (offset, field offsets, partition), the records vector's
/// length and padding, and its entry in the partitions vector, within 48 bytes.
fn produce_capacity(client_id: &str, topics: &[(&str, Vec<ProducePartitionInput<'_>>)]) -> usize {
    const PER_PARTITION: usize = 48;
    const PER_TOPIC: usize = 64;
    const FIXED: usize = 256;
    let partitions: usize =
        topics.iter().flat_map(|(_, p)| p.iter()).map(|p| p.records.len() + PER_PARTITION).sum();
    let topics: usize = topics.iter().map(|(name, _)| name.len() + PER_TOPIC).sum();
    partitions + topics + client_id.len() + FIXED + frame::PREFIX_BYTES
}

pub fn encode_produce(
    correlation_id: u32,
    client_id: &str,
    acks: wire::Acks,
    timeout_ms: u32,
    topics: &[(&str, Vec<ProducePartitionInput<'_>>)],
) -> Result<BytesMut, ProtocolError> {
    let mut builder = FlatBufferBuilder::with_capacity(produce_capacity(client_id, topics));
    let mut topic_offsets = Vec::with_capacity(topics.len());
    for (name, partitions) in topics {
        let mut partition_offsets = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let records = builder.create_vector(partition.records);
            partition_offsets.push(wire::ProducePartition::create(
                &mut builder,
                &wire::ProducePartitionArgs {
                    partition: partition.partition,
                    records: Some(records),
                },
            ));
        }
        let partitions = builder.create_vector(&partition_offsets);
        let name = builder.create_string(name);
        topic_offsets.push(wire::ProduceTopic::create(
            &mut builder,
            &wire::ProduceTopicArgs { name: Some(name), partitions: Some(partitions) },
        ));
    }
    let topics = builder.create_vector(&topic_offsets);
    let body = wire::ProduceRequest::create(
        &mut builder,
        &wire::ProduceRequestArgs { acks, timeout_ms, topics: Some(topics) },
    );
    let client_id = builder.create_string(client_id);
    let request = wire::Request::create(
        &mut builder,
        &wire::RequestArgs {
            correlation_id,
            client_id: Some(client_id),
            api_version: 0,
            body_type: RequestBody::ProduceRequest,
            body: Some(body.as_union_value()),
        },
    );
    builder.finish_minimal(request);
    into_frame(builder)
}

/// Splits a fetch response's payload into each partition's batches, in response order, checking
/// that the declared sizes add up to the payload exactly.
pub fn fetch_payload_sizes(
    response: &wire::FetchResponse<'_>,
    payload_bytes: usize,
) -> Result<Vec<usize>, ProtocolError> {
    let mut sizes = Vec::new();
    let mut total = 0usize;
    for topic in response.topics().iter().flatten() {
        for partition in topic.partitions().iter().flatten() {
            let size = partition.records_bytes() as usize;
            total = total.saturating_add(size);
            sizes.push(size);
        }
    }
    if total != payload_bytes {
        return Err(ProtocolError::PayloadMismatch { declared: total, actual: payload_bytes });
    }
    Ok(sizes)
}

// ---- Our own limits, checked after verification ------------------------------------------------

fn count(what: &'static str, value: usize, max: usize) -> Result<(), ProtocolError> {
    if value > max {
        return Err(ProtocolError::TooMany { what, value, max });
    }
    Ok(())
}

fn string(what: &'static str, value: Option<&str>, max: usize) -> Result<(), ProtocolError> {
    let length = value.map_or(0, str::len);
    if length > max {
        return Err(ProtocolError::TooLarge { what, value: length, max });
    }
    Ok(())
}

fn blob(
    what: &'static str,
    value: Option<Vector<'_, u8>>,
    max: usize,
) -> Result<(), ProtocolError> {
    let length = value.map_or(0, |v| v.len());
    if length > max {
        return Err(ProtocolError::TooLarge { what, value: length, max });
    }
    Ok(())
}

fn topic_name(name: Option<&str>) -> Result<(), ProtocolError> {
    string("topic name", name, limits::TOPIC_NAME_BYTES_MAX)
}

fn strings<'a>(
    what: &'static str,
    values: Option<Vector<'a, flatbuffers::ForwardsUOffset<&'a str>>>,
    count_max: usize,
    bytes_max: usize,
) -> Result<(), ProtocolError> {
    let Some(values) = values else { return Ok(()) };
    count(what, values.len(), count_max)?;
    values.iter().try_for_each(|v| string(what, Some(v), bytes_max))
}

fn configs<'a>(
    entries: Option<Vector<'a, flatbuffers::ForwardsUOffset<wire::ConfigEntry<'a>>>>,
) -> Result<(), ProtocolError> {
    let Some(entries) = entries else { return Ok(()) };
    count("config entries", entries.len(), limits::CONFIGS_PER_TOPIC_MAX)?;
    for entry in entries {
        string("config name", entry.name(), limits::STRING_BYTES_MAX)?;
        string("config value", entry.value(), limits::STRING_BYTES_MAX)?;
    }
    Ok(())
}

/// Sums partitions over topics, checking per-topic and per-request limits.
struct PartitionBudget(usize);

impl PartitionBudget {
    fn take(&mut self, partitions: usize) -> Result<(), ProtocolError> {
        count("partitions in one topic", partitions, limits::PARTITIONS_PER_TOPIC_MAX)?;
        self.0 += partitions;
        count("partitions in one request", self.0, limits::PARTITIONS_PER_REQUEST_MAX)
    }
}

macro_rules! topics_with_partitions {
    ($topics:expr) => {{
        let mut budget = PartitionBudget(0);
        if let Some(topics) = $topics {
            count("topics", topics.len(), limits::TOPICS_PER_REQUEST_MAX)?;
            for topic in topics {
                topic_name(topic.name())?;
                budget.take(topic.partitions().map_or(0, |p| p.len()))?;
            }
        }
    }};
}

fn group_ids(
    group_id: Option<&str>,
    member_id: Option<&str>,
    instance_id: Option<&str>,
) -> Result<(), ProtocolError> {
    string("group id", group_id, limits::STRING_BYTES_MAX)?;
    string("member id", member_id, limits::STRING_BYTES_MAX)?;
    string("group instance id", instance_id, limits::STRING_BYTES_MAX)
}

/// Checks every count and length our limits bound. Call only on a verified request.
pub fn check_request(request: &wire::Request<'_>) -> Result<(), ProtocolError> {
    string("client id", request.client_id(), limits::STRING_BYTES_MAX)?;
    let api = api_key(request.body_type()).ok_or(ProtocolError::MissingBody)?;
    let version = request.api_version();
    if let Some((_, min, max)) = SUPPORTED_APIS.iter().find(|(key, _, _)| *key == api) {
        if version < *min || version > *max {
            return Err(ProtocolError::UnsupportedVersion { api, version, min: *min, max: *max });
        }
    }
    match request.body_type() {
        RequestBody::HandshakeRequest => {
            let body = request.body_as_handshake_request().ok_or(ProtocolError::MissingBody)?;
            string("client software", body.client_software(), limits::STRING_BYTES_MAX)?;
            string("client version", body.client_version(), limits::STRING_BYTES_MAX)?;
            count("apis", body.apis().map_or(0, |a| a.len()), 1024)?;
        }
        RequestBody::MetadataRequest => {
            let body = request.body_as_metadata_request().ok_or(ProtocolError::MissingBody)?;
            strings(
                "topics",
                body.topics(),
                limits::TOPICS_PER_REQUEST_MAX,
                limits::TOPIC_NAME_BYTES_MAX,
            )?;
        }
        RequestBody::CreateTopicsRequest => {
            let body = request.body_as_create_topics_request().ok_or(ProtocolError::MissingBody)?;
            if let Some(topics) = body.topics() {
                count("topics", topics.len(), limits::TOPICS_PER_REQUEST_MAX)?;
                for topic in topics {
                    topic_name(topic.name())?;
                    configs(topic.configs())?;
                }
            }
        }
        RequestBody::DeleteTopicsRequest => {
            let body = request.body_as_delete_topics_request().ok_or(ProtocolError::MissingBody)?;
            strings(
                "topics",
                body.names(),
                limits::TOPICS_PER_REQUEST_MAX,
                limits::TOPIC_NAME_BYTES_MAX,
            )?;
        }
        RequestBody::DescribeConfigsRequest => {
            let body =
                request.body_as_describe_configs_request().ok_or(ProtocolError::MissingBody)?;
            strings(
                "topics",
                body.topics(),
                limits::TOPICS_PER_REQUEST_MAX,
                limits::TOPIC_NAME_BYTES_MAX,
            )?;
        }
        RequestBody::AlterConfigsRequest => {
            let body = request.body_as_alter_configs_request().ok_or(ProtocolError::MissingBody)?;
            if let Some(topics) = body.topics() {
                count("topics", topics.len(), limits::TOPICS_PER_REQUEST_MAX)?;
                for topic in topics {
                    topic_name(topic.name())?;
                    configs(topic.configs())?;
                }
            }
        }
        RequestBody::ProduceRequest => {
            let body = request.body_as_produce_request().ok_or(ProtocolError::MissingBody)?;
            topics_with_partitions!(body.topics());
        }
        RequestBody::FetchRequest => {
            let body = request.body_as_fetch_request().ok_or(ProtocolError::MissingBody)?;
            topics_with_partitions!(body.topics());
        }
        RequestBody::ListOffsetsRequest => {
            let body = request.body_as_list_offsets_request().ok_or(ProtocolError::MissingBody)?;
            topics_with_partitions!(body.topics());
        }
        RequestBody::OffsetCommitRequest => {
            let body = request.body_as_offset_commit_request().ok_or(ProtocolError::MissingBody)?;
            group_ids(body.group_id(), body.member_id(), body.group_instance_id())?;
            topics_with_partitions!(body.topics());
            for topic in body.topics().iter().flatten() {
                for partition in topic.partitions().iter().flatten() {
                    string("commit metadata", partition.metadata(), limits::STRING_BYTES_MAX)?;
                }
            }
        }
        RequestBody::OffsetFetchRequest => {
            let body = request.body_as_offset_fetch_request().ok_or(ProtocolError::MissingBody)?;
            string("group id", body.group_id(), limits::STRING_BYTES_MAX)?;
            topics_with_partitions!(body.topics());
        }
        RequestBody::FindCoordinatorRequest => {
            let body =
                request.body_as_find_coordinator_request().ok_or(ProtocolError::MissingBody)?;
            string("coordinator key", body.key(), limits::STRING_BYTES_MAX)?;
        }
        RequestBody::JoinGroupRequest => {
            let body = request.body_as_join_group_request().ok_or(ProtocolError::MissingBody)?;
            group_ids(body.group_id(), body.member_id(), body.group_instance_id())?;
            string("protocol type", body.protocol_type(), limits::STRING_BYTES_MAX)?;
            let protocols = body.protocols();
            count("group protocols", protocols.map_or(0, |p| p.len()), 16)?;
            for protocol in protocols.iter().flatten() {
                string("protocol name", protocol.name(), limits::STRING_BYTES_MAX)?;
                blob("protocol metadata", protocol.metadata(), limits::GROUP_BLOB_BYTES_MAX)?;
            }
        }
        RequestBody::SyncGroupRequest => {
            let body = request.body_as_sync_group_request().ok_or(ProtocolError::MissingBody)?;
            group_ids(body.group_id(), body.member_id(), body.group_instance_id())?;
            let assignments = body.assignments();
            count(
                "assignments",
                assignments.map_or(0, |a| a.len()),
                limits::MEMBERS_PER_GROUP_MAX,
            )?;
            for assignment in assignments.iter().flatten() {
                string("member id", assignment.member_id(), limits::STRING_BYTES_MAX)?;
                blob("assignment", assignment.assignment(), limits::GROUP_BLOB_BYTES_MAX)?;
            }
        }
        RequestBody::HeartbeatRequest => {
            let body = request.body_as_heartbeat_request().ok_or(ProtocolError::MissingBody)?;
            group_ids(body.group_id(), body.member_id(), body.group_instance_id())?;
        }
        RequestBody::LeaveGroupRequest => {
            let body = request.body_as_leave_group_request().ok_or(ProtocolError::MissingBody)?;
            string("group id", body.group_id(), limits::STRING_BYTES_MAX)?;
            let members = body.members();
            count("members", members.map_or(0, |m| m.len()), limits::MEMBERS_PER_GROUP_MAX)?;
            for member in members.iter().flatten() {
                group_ids(None, member.member_id(), member.group_instance_id())?;
            }
        }
        RequestBody::ListGroupsRequest => {
            let body = request.body_as_list_groups_request().ok_or(ProtocolError::MissingBody)?;
            strings("state filters", body.states_filter(), 16, limits::STRING_BYTES_MAX)?;
        }
        RequestBody::DescribeGroupsRequest => {
            let body =
                request.body_as_describe_groups_request().ok_or(ProtocolError::MissingBody)?;
            strings(
                "groups",
                body.groups(),
                limits::GROUPS_PER_REQUEST_MAX,
                limits::STRING_BYTES_MAX,
            )?;
        }
        RequestBody::DeleteGroupsRequest => {
            let body = request.body_as_delete_groups_request().ok_or(ProtocolError::MissingBody)?;
            strings(
                "groups",
                body.groups(),
                limits::GROUPS_PER_REQUEST_MAX,
                limits::STRING_BYTES_MAX,
            )?;
        }
        RequestBody::InitProducerIdRequest => {
            let body =
                request.body_as_init_producer_id_request().ok_or(ProtocolError::MissingBody)?;
            string("producer name", body.producer_name(), limits::STRING_BYTES_MAX)?;
        }
        RequestBody::RegisterBrokerRequest => {
            let body =
                request.body_as_register_broker_request().ok_or(ProtocolError::MissingBody)?;
            string("client address", body.client_address(), limits::STRING_BYTES_MAX)?;
        }
        _ => return Err(ProtocolError::MissingBody),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builder's capacity estimate holds every shape of request: if it fell short, the
    /// builder would grow (zero-fill and copy) and the frame would be copied once more.
    #[test]
    fn produce_capacity_covers_the_encoded_request() {
        let batch = vec![7u8; 230];
        let big = vec![9u8; 1 << 20];
        let shapes: Vec<Vec<(String, usize, &[u8])>> = vec![
            vec![("t".into(), 5_000, &batch[..])],
            vec![("t".into(), 1, &big[..])],
            vec![("a-long-topic-name-for-the-estimate".into(), 3, &batch[..1])],
            (0..200).map(|i| (format!("topic-{i}"), 25, &batch[..])).collect(),
            vec![],
        ];
        for shape in shapes {
            let topics: Vec<(&str, Vec<ProducePartitionInput<'_>>)> = shape
                .iter()
                .map(|(name, partitions, records)| {
                    let partitions = (0..*partitions as i32)
                        .map(|partition| ProducePartitionInput { partition, records })
                        .collect();
                    (name.as_str(), partitions)
                })
                .collect();
            let client_id = "spate-client-with-a-name";
            let frame = encode_produce(1, client_id, wire::Acks::All, 30_000, &topics).unwrap();
            let estimate = produce_capacity(client_id, &topics);
            assert!(
                frame.len() <= estimate,
                "{} > {estimate} for {} topics",
                frame.len(),
                topics.len()
            );
        }
    }
}
