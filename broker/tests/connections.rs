//! Every connection a broker accepts gets served, however its arrival falls against the accept
//! loop's periodic look at the shutdown flag.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use spate_protocol::codec;
use spate_protocol::frame::FrameDecoder;
use spate_protocol::wire::{self, RequestBodyT, RequestT};

/// Fresh connections the test opens, spread over the client port and both shard ports.
const CONNECTIONS: u32 = 300;
/// Unserved connections after which the test stops looking (each costs `ANSWER_TIMEOUT`).
const UNSERVED_MAX: usize = 3;
/// How long one connection may wait for its answer: far beyond a served handshake, so only an
/// unserved connection reaches it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one handshake on a fresh connection; returns the correlation id of the answer, or why
/// there was none.
fn handshake_on_fresh_connection(port: u16, correlation_id: u32) -> Result<u32, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    let request = RequestT {
        correlation_id,
        client_id: Some("connections-test".into()),
        api_version: 0,
        body: RequestBodyT::HandshakeRequest(Box::new(wire::HandshakeRequestT {
            client_software: Some("connections-test".into()),
            client_version: Some("0".into()),
            apis: None,
        })),
    };
    let frame = codec::encode_request(&request).unwrap();
    stream.write_all(&frame).map_err(|e| e.to_string())?;
    let decoder = FrameDecoder::default();
    let mut buffer = BytesMut::new();
    let mut chunk = [0u8; 4096];
    // Bounded: each read takes at least one byte or ends the attempt.
    loop {
        if let Some(frame) = decoder.decode(&mut buffer).map_err(|e| e.to_string())? {
            let response = codec::decode_response(&frame.header).map_err(|e| e.to_string())?;
            return Ok(response.correlation_id());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed without an answer".into()),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(error) => return Err(format!("no answer: {error}")),
        }
    }
}

#[test]
fn every_accepted_connection_is_served_while_accept_loops_poll_for_stop() {
    let dir = temp_dir();
    // Accept loops look at the stop flag every 100 µs instead of every 100 ms, so each
    // connection below arrives among many of those looks.
    let broker = Broker::start_with_env(dir.path(), &[("SPATE_TEST_ACCEPT_POLL_US", "100")]);
    let ports = [broker.port, broker.port + 1, broker.port + 2];
    let mut unserved = Vec::new();
    for index in 0..CONNECTIONS {
        let port = ports[index as usize % ports.len()];
        let correlation_id = index + 1;
        match handshake_on_fresh_connection(port, correlation_id) {
            Ok(answered) => assert_eq!(answered, correlation_id),
            Err(reason) => unserved.push(format!("connection {index} to port {port}: {reason}")),
        }
        if unserved.len() >= UNSERVED_MAX {
            break;
        }
    }
    assert!(unserved.is_empty(), "connections got no answer: {unserved:#?}");
}
