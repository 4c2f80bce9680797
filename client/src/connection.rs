//! One TCP connection to a broker (or to one of its shards): pipelined requests matched to
//! responses by correlation id, a bounded number in flight, a reader task per connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use futures_channel::oneshot;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use glommio::sync::{RwLock, Semaphore};
use spate_protocol::codec;
use spate_protocol::frame::{Frame, FrameDecoder};

use crate::error::{ClientError, Result};
use crate::limits;
use spate_protocol::turnstile::Turnstile;

/// Cheap to clone; the connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct Connection {
    inner: Rc<Inner>,
}

struct Inner {
    address: SocketAddr,
    writer: RwLock<WriteHalf<TcpStream>>,
    pending: RefCell<HashMap<u32, oneshot::Sender<Result<Frame>>>>,
    next_correlation_id: Cell<u32>,
    in_flight: Semaphore,
    /// Requests are written in the order `request`/`send` were called (pipelined produces of
    /// one partition must reach the broker in order), whatever order their tasks wake in.
    writes: Turnstile,
    broken: RefCell<Option<String>>,
    /// Dropping the task cancels the reader, which closes the socket.
    reader: RefCell<Option<glommio::Task<()>>>,
}

impl Connection {
    pub async fn connect(address: SocketAddr, timeout: Duration) -> Result<Connection> {
        let connect_error =
            |message: String| ClientError::Connect { address: address.to_string(), message };
        let stream = TcpStream::connect_timeout(address, timeout)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| connect_error(e.to_string()))?;
        let (read_half, write_half) = futures_lite::io::split(stream);
        let inner = Rc::new(Inner {
            address,
            writer: RwLock::new(write_half),
            pending: RefCell::new(HashMap::new()),
            next_correlation_id: Cell::new(1),
            in_flight: Semaphore::new(limits::IN_FLIGHT_PER_CONNECTION_MAX as u64),
            writes: Turnstile::default(),
            broken: RefCell::new(None),
            reader: RefCell::new(None),
        });
        let task = glommio::spawn_local(read_loop(Rc::downgrade(&inner), read_half));
        *inner.reader.borrow_mut() = Some(task);
        Ok(Connection { inner })
    }

    pub fn address(&self) -> SocketAddr {
        self.inner.address
    }

    pub fn is_broken(&self) -> bool {
        self.inner.broken.borrow().is_some()
    }

    /// A correlation id for the next request on this connection.
    pub fn next_correlation_id(&self) -> u32 {
        let id = self.inner.next_correlation_id.get();
        self.inner.next_correlation_id.set(id.wrapping_add(1).max(1));
        id
    }

    fn lost(&self, message: impl Into<String>) -> ClientError {
        ClientError::ConnectionLost {
            address: self.inner.address.to_string(),
            message: message.into(),
        }
    }

    /// Sends a whole encoded request frame carrying `correlation_id` and waits for its response.
    pub async fn request(
        &self,
        correlation_id: u32,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<Frame> {
        if let Some(reason) = self.inner.broken.borrow().clone() {
            return Err(self.lost(reason));
        }
        let turn = self.inner.writes.ticket();
        turn.wait().await;
        // Only the request whose turn it is waits for room in flight, so none overtakes it.
        let _permit =
            self.inner.in_flight.acquire_permit(1).await.map_err(|_| self.lost("closed"))?;
        let (reply, response) = oneshot::channel();
        self.inner.pending.borrow_mut().insert(correlation_id, reply);
        if let Err(error) = self.write(frame).await {
            self.inner.pending.borrow_mut().remove(&correlation_id);
            return Err(error);
        }
        drop(turn);
        let waited = glommio::timer::timeout(timeout, async { Ok(response.await) }).await;
        match waited {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.lost("connection closed")),
            Err(_) => {
                // A late response finds no waiter and is dropped by the reader.
                self.inner.pending.borrow_mut().remove(&correlation_id);
                Err(ClientError::Timeout(timeout.as_millis() as u64))
            }
        }
    }

    /// Sends a request that gets no response (produce with acks=none).
    pub async fn send(&self, frame: &[u8]) -> Result<()> {
        if let Some(reason) = self.inner.broken.borrow().clone() {
            return Err(self.lost(reason));
        }
        let turn = self.inner.writes.ticket();
        turn.wait().await;
        self.write(frame).await
    }

    async fn write(&self, frame: &[u8]) -> Result<()> {
        let mut writer = self.inner.writer.write().await.map_err(|_| self.lost("closed"))?;
        let written = async {
            writer.write_all(frame).await?;
            writer.flush().await
        }
        .await;
        if let Err(error) = written {
            fail(&self.inner, format!("write failed: {error}"));
            return Err(self.lost(error.to_string()));
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Cancels the reader task (if it is not the one dropping us).
        if let Ok(mut reader) = self.reader.try_borrow_mut() {
            reader.take();
        }
    }
}

fn fail(inner: &Inner, reason: String) {
    inner.broken.borrow_mut().get_or_insert(reason.clone());
    let pending: Vec<_> = inner.pending.borrow_mut().drain().collect();
    for (_, reply) in pending {
        let _ = reply.send(Err(ClientError::ConnectionLost {
            address: inner.address.to_string(),
            message: reason.clone(),
        }));
    }
}

async fn read_loop(inner: Weak<Inner>, mut reader: ReadHalf<TcpStream>) {
    let decoder = FrameDecoder::with_limit(spate_protocol::limits::FRAME_BYTES_MAX);
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let reason = loop {
        // Drain every whole frame already buffered; each iteration consumes one.
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    let Some(inner) = inner.upgrade() else { return };
                    let correlation_id = match codec::decode_response(&frame.header) {
                        Ok(response) => response.correlation_id(),
                        Err(error) => {
                            fail(&inner, format!("bad response: {error}"));
                            return;
                        }
                    };
                    let waiter = inner.pending.borrow_mut().remove(&correlation_id);
                    match waiter {
                        Some(reply) => {
                            let _ = reply.send(Ok(frame));
                        }
                        None => {
                            tracing::debug!(correlation_id, "response with no waiter (timed out?)")
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    if let Some(inner) = inner.upgrade() {
                        fail(&inner, format!("bad frame: {error}"));
                    }
                    return;
                }
            }
        }
        let missing = decoder.missing(&buffer).unwrap_or(0).max(1);
        let want = missing.clamp(16 * 1024, 1024 * 1024);
        if buffer.len() + want > limits::READ_BUFFER_BYTES_MAX {
            break "read buffer limit".to_string();
        }
        let start = buffer.len();
        buffer.resize(start + want, 0);
        match reader.read(&mut buffer[start..]).await {
            Ok(0) => {
                buffer.truncate(start);
                break "closed by the broker".to_string();
            }
            Ok(n) => buffer.truncate(start + n),
            Err(error) => break format!("read failed: {error}"),
        }
    };
    if let Some(inner) = inner.upgrade() {
        fail(&inner, reason);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    use spate_protocol::wire::{RequestBodyT, RequestT, ResponseT};

    use super::*;

    const REQUESTS: u32 = 2000;

    /// A broker stand-in on loopback: answers every request at once and records the order in
    /// which the correlation ids arrived.
    fn recording_server() -> (SocketAddr, std::thread::JoinHandle<Vec<u32>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let decoder = FrameDecoder::default();
            let mut buffer = BytesMut::new();
            let mut seen = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            // Bounded by the requests the test sends.
            while seen.len() < REQUESTS as usize {
                while let Some(frame) = decoder.decode(&mut buffer).unwrap() {
                    let id = codec::decode_request(&frame.header).unwrap().correlation_id();
                    seen.push(id);
                    let response = ResponseT { correlation_id: id, ..Default::default() };
                    socket.write_all(&codec::encode_response(&response, 0).unwrap()).unwrap();
                }
                let n = socket.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            seen
        });
        (address, server)
    }

    #[test]
    fn requests_reach_the_broker_in_the_order_they_were_made() {
        let (address, server) = recording_server();
        let done = Arc::new(Mutex::new(0u32));
        let counted = done.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let connection =
                    Connection::connect(address, Duration::from_secs(5)).await.unwrap();
                let mut tasks = Vec::new();
                for i in 0..REQUESTS {
                    let connection = connection.clone();
                    let id = connection.next_correlation_id();
                    let request = RequestT {
                        correlation_id: id,
                        client_id: Some("order".into()),
                        api_version: 0,
                        body: RequestBodyT::MetadataRequest(Box::default()),
                    };
                    let frame = codec::encode_request(&request).unwrap();
                    // Spawned tasks run at once; more than the in-flight limit are made, and
                    // answers free room while later ones are still being made: a newcomer
                    // must not take the room of a request that was waiting for it.
                    tasks.push(glommio::spawn_local(async move {
                        connection.request(id, &frame, Duration::from_secs(10)).await
                    }));
                    if i % 3 == 0 {
                        futures_lite::future::yield_now().await;
                        glommio::executor().yield_task_queue_now().await;
                    }
                }
                for task in tasks {
                    task.await.unwrap();
                    *counted.lock().unwrap() += 1;
                }
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(*done.lock().unwrap(), REQUESTS);
        let seen = server.join().unwrap();
        let expected: Vec<u32> = (1..=REQUESTS).collect();
        assert_eq!(seen, expected, "requests were written out of order");
    }
}
