//! Every request and response type survives encode → frame → verify → decode unchanged, and
//! seeded fuzzing of frames never panics the decoder.

use bytes::BytesMut;
use rand::{Rng, SeedableRng};

use crate::codec::{self, ProtocolError};
use crate::frame::FrameDecoder;
use crate::wire::*;

fn s(text: &str) -> Option<String> {
    Some(text.to_string())
}

fn config(name: &str, value: &str) -> ConfigEntryT {
    ConfigEntryT { name: s(name), value: s(value) }
}

fn topic_result(name: &str, code: ErrorCode) -> TopicResultT {
    TopicResultT { name: s(name), error_code: code, error_message: s("why") }
}

pub(crate) fn sample_requests() -> Vec<RequestBodyT> {
    vec![
        RequestBodyT::HandshakeRequest(Box::new(HandshakeRequestT {
            client_software: s("spate-client"),
            client_version: s("0.1.0"),
            apis: Some(vec![ApiVersionRangeT {
                api: ApiKey::Produce,
                min_version: 0,
                max_version: 3,
            }]),
        })),
        RequestBodyT::MetadataRequest(Box::new(MetadataRequestT {
            topics: Some(vec!["orders".into(), "logs".into()]),
        })),
        RequestBodyT::CreateTopicsRequest(Box::new(CreateTopicsRequestT {
            topics: Some(vec![CreatableTopicT {
                name: s("orders"),
                partitions: 12,
                replication_factor: 3,
                configs: Some(vec![config("retention.ms", "3600000"), config("flush", "always")]),
                replica_assignment: Some(vec![PartitionReplicasT {
                    replicas: Some(vec![1, 2, 3]),
                }]),
                topic_id: 77,
                shards: Some(vec![1]),
            }]),
            timeout_ms: 5000,
            validate_only: true,
            forwarded: true,
        })),
        RequestBodyT::DeleteTopicsRequest(Box::new(DeleteTopicsRequestT {
            names: Some(vec!["old".into()]),
            timeout_ms: 100,
            forwarded: false,
        })),
        RequestBodyT::DescribeConfigsRequest(Box::new(DescribeConfigsRequestT {
            topics: Some(vec!["orders".into()]),
        })),
        RequestBodyT::AlterConfigsRequest(Box::new(AlterConfigsRequestT {
            topics: Some(vec![TopicConfigUpdateT {
                name: s("orders"),
                configs: Some(vec![config("segment.bytes", "8388608")]),
            }]),
            validate_only: false,
            forwarded: false,
        })),
        RequestBodyT::ProduceRequest(Box::new(ProduceRequestT {
            acks: Acks::All,
            timeout_ms: 30_000,
            topics: Some(vec![ProduceTopicT {
                name: s("orders"),
                partitions: Some(vec![ProducePartitionT {
                    partition: 3,
                    records: Some(vec![1, 2, 3, 4, 5]),
                }]),
            }]),
        })),
        RequestBodyT::FetchRequest(Box::new(FetchRequestT {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: Some(vec![FetchTopicT {
                name: s("orders"),
                partitions: Some(vec![
                    FetchPartitionT { partition: 0, fetch_offset: 42, max_bytes: 65536 },
                    FetchPartitionT { partition: 1, fetch_offset: 0, max_bytes: 65536 },
                ]),
            }]),
        })),
        RequestBodyT::ListOffsetsRequest(Box::new(ListOffsetsRequestT {
            topics: Some(vec![ListOffsetsTopicT {
                name: s("orders"),
                partitions: Some(vec![
                    ListOffsetsPartitionT { partition: 0, timestamp: -1 },
                    ListOffsetsPartitionT { partition: 1, timestamp: 1_700_000_000_000 },
                ]),
            }]),
        })),
        RequestBodyT::OffsetCommitRequest(Box::new(OffsetCommitRequestT {
            group_id: s("billing"),
            generation_id: 7,
            member_id: s("member-1"),
            group_instance_id: s("host-a"),
            topics: Some(vec![OffsetCommitTopicT {
                name: s("orders"),
                partitions: Some(vec![OffsetCommitPartitionT {
                    partition: 2,
                    offset: 1000,
                    metadata: s("m"),
                }]),
            }]),
        })),
        RequestBodyT::OffsetFetchRequest(Box::new(OffsetFetchRequestT {
            group_id: s("billing"),
            topics: Some(vec![OffsetFetchTopicT {
                name: s("orders"),
                partitions: Some(vec![0, 1, 2]),
            }]),
        })),
        RequestBodyT::FindCoordinatorRequest(Box::new(FindCoordinatorRequestT {
            key: s("billing"),
            key_type: CoordinatorType::Group,
        })),
        RequestBodyT::JoinGroupRequest(Box::new(JoinGroupRequestT {
            group_id: s("billing"),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            member_id: s(""),
            group_instance_id: s("host-a"),
            protocol_type: s("consumer"),
            protocols: Some(vec![GroupProtocolT {
                name: s("cooperative-sticky"),
                metadata: Some(vec![9, 9]),
            }]),
        })),
        RequestBodyT::SyncGroupRequest(Box::new(SyncGroupRequestT {
            group_id: s("billing"),
            generation_id: 3,
            member_id: s("member-1"),
            group_instance_id: None,
            assignments: Some(vec![SyncGroupAssignmentT {
                member_id: s("member-1"),
                assignment: Some(vec![1]),
            }]),
        })),
        RequestBodyT::HeartbeatRequest(Box::new(HeartbeatRequestT {
            group_id: s("billing"),
            generation_id: 3,
            member_id: s("member-1"),
            group_instance_id: None,
        })),
        RequestBodyT::LeaveGroupRequest(Box::new(LeaveGroupRequestT {
            group_id: s("billing"),
            members: Some(vec![MemberIdentityT {
                member_id: s("member-1"),
                group_instance_id: None,
            }]),
        })),
        RequestBodyT::ListGroupsRequest(Box::new(ListGroupsRequestT {
            states_filter: Some(vec!["Stable".into()]),
        })),
        RequestBodyT::DescribeGroupsRequest(Box::new(DescribeGroupsRequestT {
            groups: Some(vec!["billing".into()]),
        })),
        RequestBodyT::DeleteGroupsRequest(Box::new(DeleteGroupsRequestT {
            groups: Some(vec!["old-group".into()]),
        })),
        RequestBodyT::InitProducerIdRequest(Box::new(InitProducerIdRequestT {
            producer_name: Some("orders-writer".into()),
        })),
        RequestBodyT::RegisterBrokerRequest(Box::new(RegisterBrokerRequestT {
            broker_id: 3,
            client_address: s("10.0.0.3:9292"),
            shards: 2,
        })),
    ]
}

fn sample_responses() -> Vec<ResponseBodyT> {
    vec![
        ResponseBodyT::HandshakeResponse(Box::new(HandshakeResponseT {
            protocol_version: 1,
            apis: Some(vec![ApiVersionRangeT {
                api: ApiKey::Fetch,
                min_version: 0,
                max_version: 0,
            }]),
            broker_id: 1,
            cluster_id: s("c1"),
        })),
        ResponseBodyT::MetadataResponse(Box::new(MetadataResponseT {
            brokers: Some(vec![BrokerInfoT {
                broker_id: 1,
                host: s("127.0.0.1"),
                port: 9292,
                alive: false,
            }]),
            controller_id: 1,
            topics: Some(vec![TopicMetadataT {
                name: s("orders"),
                error_code: ErrorCode::None,
                partitions: Some(vec![PartitionMetadataT {
                    partition: 0,
                    error_code: ErrorCode::None,
                    leader_broker: 1,
                    leader_term: 4,
                    shard: 1,
                    shard_host: s("127.0.0.1"),
                    shard_port: 9294,
                    replicas: Some(vec![1, 2]),
                    isr: Some(vec![1]),
                    high_watermark: 42,
                    replica_log_ends: Some(vec![42, 40]),
                }]),
            }]),
        })),
        ResponseBodyT::CreateTopicsResponse(Box::new(CreateTopicsResponseT {
            topics: Some(vec![topic_result("orders", ErrorCode::TopicAlreadyExists)]),
        })),
        ResponseBodyT::DeleteTopicsResponse(Box::new(DeleteTopicsResponseT {
            topics: Some(vec![topic_result("old", ErrorCode::None)]),
        })),
        ResponseBodyT::DescribeConfigsResponse(Box::new(DescribeConfigsResponseT {
            topics: Some(vec![TopicConfigsT {
                name: s("orders"),
                error_code: ErrorCode::None,
                error_message: None,
                configs: Some(vec![DescribedConfigT {
                    name: s("flush"),
                    value: s("never"),
                    is_default: true,
                }]),
            }]),
        })),
        ResponseBodyT::AlterConfigsResponse(Box::new(AlterConfigsResponseT {
            topics: Some(vec![topic_result("orders", ErrorCode::InvalidConfig)]),
        })),
        ResponseBodyT::ProduceResponse(Box::new(ProduceResponseT {
            topics: Some(vec![ProduceTopicResponseT {
                name: s("orders"),
                partitions: Some(vec![ProducePartitionResponseT {
                    partition: 3,
                    error_code: ErrorCode::None,
                    error_message: None,
                    base_offset: 1234,
                    log_start_offset: 0,
                }]),
            }]),
        })),
        ResponseBodyT::FetchResponse(Box::new(FetchResponseT {
            topics: Some(vec![FetchTopicResponseT {
                name: s("orders"),
                partitions: Some(vec![FetchPartitionResponseT {
                    partition: 0,
                    error_code: ErrorCode::None,
                    error_message: None,
                    high_watermark: 100,
                    log_start_offset: 0,
                    records_bytes: 0,
                }]),
            }]),
        })),
        ResponseBodyT::ListOffsetsResponse(Box::new(ListOffsetsResponseT {
            topics: Some(vec![ListOffsetsTopicResponseT {
                name: s("orders"),
                partitions: Some(vec![ListOffsetsPartitionResponseT {
                    partition: 0,
                    error_code: ErrorCode::None,
                    error_message: None,
                    offset: 77,
                }]),
            }]),
        })),
        ResponseBodyT::OffsetCommitResponse(Box::new(OffsetCommitResponseT {
            topics: Some(vec![TopicPartitionResultsT {
                name: s("orders"),
                partitions: Some(vec![PartitionResultT {
                    partition: 2,
                    error_code: ErrorCode::IllegalGeneration,
                    error_message: s("fenced"),
                }]),
            }]),
        })),
        ResponseBodyT::OffsetFetchResponse(Box::new(OffsetFetchResponseT {
            topics: Some(vec![OffsetFetchTopicResponseT {
                name: s("orders"),
                partitions: Some(vec![OffsetFetchPartitionT {
                    partition: 0,
                    offset: 10,
                    metadata: None,
                    error_code: ErrorCode::None,
                }]),
            }]),
        })),
        ResponseBodyT::FindCoordinatorResponse(Box::new(FindCoordinatorResponseT {
            broker_id: 1,
            host: s("127.0.0.1"),
            port: 9292,
            shard: 0,
            shard_host: s("127.0.0.1"),
            shard_port: 9293,
        })),
        ResponseBodyT::JoinGroupResponse(Box::new(JoinGroupResponseT {
            generation_id: 5,
            protocol_name: s("range"),
            leader: s("member-1"),
            member_id: s("member-2"),
            members: Some(vec![JoinGroupMemberT {
                member_id: s("member-1"),
                group_instance_id: None,
                metadata: Some(vec![1, 2]),
            }]),
        })),
        ResponseBodyT::SyncGroupResponse(Box::new(SyncGroupResponseT {
            assignment: Some(vec![0, 1, 2]),
        })),
        ResponseBodyT::HeartbeatResponse(Box::new(HeartbeatResponseT {})),
        ResponseBodyT::LeaveGroupResponse(Box::new(LeaveGroupResponseT {
            members: Some(vec![MemberResultT {
                member_id: s("member-1"),
                group_instance_id: None,
                error_code: ErrorCode::None,
            }]),
        })),
        ResponseBodyT::ListGroupsResponse(Box::new(ListGroupsResponseT {
            groups: Some(vec![ListedGroupT {
                group_id: s("billing"),
                protocol_type: s("consumer"),
                state: s("Stable"),
            }]),
        })),
        ResponseBodyT::DescribeGroupsResponse(Box::new(DescribeGroupsResponseT {
            groups: Some(vec![DescribedGroupT {
                group_id: s("billing"),
                error_code: ErrorCode::None,
                state: s("Stable"),
                protocol_type: s("consumer"),
                protocol: s("range"),
                members: Some(vec![DescribedMemberT {
                    member_id: s("member-1"),
                    group_instance_id: None,
                    client_id: s("c"),
                    client_host: s("/127.0.0.1"),
                    metadata: Some(vec![]),
                    assignment: Some(vec![3]),
                }]),
            }]),
        })),
        ResponseBodyT::DeleteGroupsResponse(Box::new(DeleteGroupsResponseT {
            groups: Some(vec![topic_result("old-group", ErrorCode::NonEmptyGroup)]),
        })),
        ResponseBodyT::InitProducerIdResponse(Box::new(InitProducerIdResponseT {
            producer_id: 1000,
            producer_epoch: 3,
        })),
        ResponseBodyT::RegisterBrokerResponse(Box::default()),
    ]
}

fn frame_of(mut bytes: BytesMut) -> crate::frame::Frame {
    let frame = FrameDecoder::default().decode(&mut bytes).unwrap().expect("whole frame");
    assert!(bytes.is_empty());
    frame
}

#[test]
fn every_request_round_trips() {
    let requests = sample_requests();
    assert_eq!(requests.len(), crate::codec::SUPPORTED_APIS.len(), "one sample per API");
    for (i, body) in requests.into_iter().enumerate() {
        let request =
            RequestT { correlation_id: i as u32 + 1, client_id: s("test"), api_version: 0, body };
        let frame = frame_of(codec::encode_request(&request).unwrap());
        let decoded =
            codec::decode_request(&frame.header).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(codec::api_key(decoded.body_type()), Some(ApiKey(i as u16)));
        assert_eq!(decoded.unpack(), request, "request {i}");
    }
}

#[test]
fn every_response_round_trips() {
    let responses = sample_responses();
    assert_eq!(responses.len(), crate::codec::SUPPORTED_APIS.len());
    for (i, body) in responses.into_iter().enumerate() {
        let response = ResponseT {
            correlation_id: i as u32,
            error_code: ErrorCode::None,
            error_message: None,
            body,
        };
        let frame = frame_of(codec::encode_response(&response, 0).unwrap());
        let decoded = codec::decode_response(&frame.header).unwrap();
        assert_eq!(decoded.unpack(), response, "response {i}");
    }
    // An envelope-level error with no body.
    let error = ResponseT {
        correlation_id: 9,
        error_code: ErrorCode::CorruptMessage,
        error_message: s("bad frame"),
        body: ResponseBodyT::NONE,
    };
    let frame = frame_of(codec::encode_response(&error, 0).unwrap());
    assert_eq!(codec::decode_response(&frame.header).unwrap().unpack(), error);
}

#[test]
fn produce_fast_path_matches_object_api_and_fetch_payload_splits() {
    let batch = vec![7u8; 1000];
    let fast = codec::encode_produce(
        5,
        "c",
        Acks::All,
        1000,
        &[("orders", vec![codec::ProducePartitionInput { partition: 1, records: &batch }])],
    )
    .unwrap();
    let frame = frame_of(fast);
    let decoded = codec::decode_request(&frame.header).unwrap();
    let produce = decoded.body_as_produce_request().unwrap();
    let partition = produce.topics().unwrap().get(0).partitions().unwrap().get(0);
    assert_eq!(partition.records().unwrap().bytes(), &batch[..]);

    let response = ResponseT {
        body: ResponseBodyT::FetchResponse(Box::new(FetchResponseT {
            topics: Some(vec![FetchTopicResponseT {
                name: s("t"),
                partitions: Some(vec![
                    FetchPartitionResponseT {
                        partition: 0,
                        records_bytes: 10,
                        ..Default::default()
                    },
                    FetchPartitionResponseT {
                        partition: 1,
                        records_bytes: 5,
                        ..Default::default()
                    },
                ]),
            }]),
        })),
        ..Default::default()
    };
    let mut bytes = codec::encode_response(&response, 15).unwrap();
    bytes.extend_from_slice(&[1u8; 15]);
    let frame = frame_of(bytes);
    let decoded = codec::decode_response(&frame.header).unwrap();
    let fetch = decoded.body_as_fetch_response().unwrap();
    assert_eq!(codec::fetch_payload_sizes(&fetch, frame.payload.len()).unwrap(), vec![10, 5]);
    assert!(matches!(
        codec::fetch_payload_sizes(&fetch, 14),
        Err(ProtocolError::PayloadMismatch { .. })
    ));
}

#[test]
fn our_limits_are_enforced_after_verification() {
    let too_many = RequestT {
        body: RequestBodyT::MetadataRequest(Box::new(MetadataRequestT {
            topics: Some(
                (0..crate::limits::TOPICS_PER_REQUEST_MAX + 1).map(|i| format!("t{i}")).collect(),
            ),
        })),
        ..Default::default()
    };
    let frame = frame_of(codec::encode_request(&too_many).unwrap());
    let error = codec::decode_request(&frame.header).unwrap_err();
    assert!(matches!(error, ProtocolError::TooMany { .. }));
    assert_eq!(error.error_code(), ErrorCode::InvalidRequest);

    let long_name = RequestT {
        body: RequestBodyT::DeleteTopicsRequest(Box::new(DeleteTopicsRequestT {
            names: Some(vec!["x".repeat(300)]),
            timeout_ms: 0,
            forwarded: false,
        })),
        ..Default::default()
    };
    let frame = frame_of(codec::encode_request(&long_name).unwrap());
    assert!(matches!(codec::decode_request(&frame.header), Err(ProtocolError::TooLarge { .. })));

    let future_version = RequestT {
        api_version: 9,
        body: RequestBodyT::HeartbeatRequest(Box::default()),
        ..Default::default()
    };
    let frame = frame_of(codec::encode_request(&future_version).unwrap());
    let error = codec::decode_request(&frame.header).unwrap_err();
    assert_eq!(error.error_code(), ErrorCode::UnsupportedVersion);

    let no_body = RequestT { body: RequestBodyT::NONE, ..Default::default() };
    let frame = frame_of(codec::encode_request(&no_body).unwrap());
    assert_eq!(codec::decode_request(&frame.header).unwrap_err(), ProtocolError::MissingBody);
}

/// Seeded fuzzing: random bytes and mutated valid frames go through the frame decoder and the
/// request/response decoders; every case decodes or errors, none panics.
#[test]
fn fuzzed_frames_never_panic() {
    let seed: u64 =
        std::env::var("SPATE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("frame fuzz seed {seed} (rerun with SPATE_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut valid: Vec<Vec<u8>> = sample_requests()
        .into_iter()
        .map(|body| {
            codec::encode_request(&RequestT { body, ..Default::default() }).unwrap().to_vec()
        })
        .collect();
    valid.extend(sample_responses().into_iter().map(|body| {
        codec::encode_response(&ResponseT { body, ..Default::default() }, 0).unwrap().to_vec()
    }));
    let decoder = FrameDecoder::with_limit(1 << 20);
    let (mut decoded, mut refused) = (0usize, 0usize);
    for case in 0..20_000 {
        let mut bytes = if case % 5 == 0 {
            let length = rng.gen_range(0..300);
            (0..length).map(|_| rng.gen()).collect::<Vec<u8>>()
        } else {
            valid[rng.gen_range(0..valid.len())].clone()
        };
        if case % 5 != 0 {
            for _ in 0..rng.gen_range(1..6) {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = match rng.gen_range(0..3) {
                    0 => rng.gen(),
                    1 => bytes[at] ^ (1 << rng.gen_range(0..8)),
                    _ => 0xff,
                };
            }
        }
        if rng.gen_bool(0.1) {
            let keep = rng.gen_range(0..=bytes.len());
            bytes.truncate(keep);
        }
        let mut buffer = BytesMut::from(&bytes[..]);
        // Bounded: each decoded frame consumes at least its 8-byte prefix.
        for _ in 0..bytes.len() / 8 + 1 {
            match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    let request = codec::decode_request(&frame.header);
                    if let Ok(request) = &request {
                        let _ = request.unpack();
                    }
                    if let Ok(response) = codec::decode_response(&frame.header) {
                        let _ = response.unpack();
                        if let Some(fetch) = response.body_as_fetch_response() {
                            let _ = codec::fetch_payload_sizes(&fetch, frame.payload.len());
                        }
                    }
                    if request.is_ok() {
                        decoded += 1;
                    } else {
                        refused += 1;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    refused += 1;
                    break;
                }
            }
        }
    }
    // The corpus must exercise both outcomes, or the test proves nothing.
    assert!(decoded > 100 && refused > 1000, "decoded {decoded}, refused {refused}");
}
