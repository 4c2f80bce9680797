#![no_main]
//! Any bytes through the frame decoder, then the request and response decoders (and, for fetch
//! responses, the payload split) must decode or error, never panic.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spate_protocol::{batch, codec, frame::FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let mut buffer = BytesMut::from(data);
    let decoder = FrameDecoder::with_limit(1 << 20);
    for _ in 0..data.len() / 8 + 1 {
        let Ok(Some(frame)) = decoder.decode(&mut buffer) else { break };
        if let Ok(request) = codec::decode_request(&frame.header) {
            let _ = request.unpack();
            if let Some(produce) = request.body_as_produce_request() {
                for topic in produce.topics().iter().flatten() {
                    for partition in topic.partitions().iter().flatten() {
                        if let Some(records) = partition.records() {
                            let _ = batch::validate(records.bytes());
                        }
                    }
                }
            }
        }
        if let Ok(response) = codec::decode_response(&frame.header) {
            let _ = response.unpack();
            if let Some(fetch) = response.body_as_fetch_response() {
                let _ = codec::fetch_payload_sizes(&fetch, frame.payload.len());
            }
        }
    }
});
