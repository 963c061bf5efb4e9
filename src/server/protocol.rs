//! The manager ⇄ launcher protocol: length-prefixed JSON frames over the worker's
//! stdin/stdout.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. The manager
//! sends [`ToWorker`] frames on the worker's stdin; the worker answers with [`FromWorker`]
//! frames on its stdout. Nothing else is ever written to the worker's stdout (its logs go
//! to stderr), so a frame boundary is never lost.
//!
//! ```text
//!  manager                                   kakoi __launch (single-threaded)
//!  spawn ──────────────────────────────────▶ Sandbox::new (detect, compile seccomp)
//!        ◀──────────────── {"type":"ready","pid":..,"info":{..}}
//!  {"type":"run","id":7,"spec":{..}} ──────▶ Sandbox::run_with
//!        ◀──────────────── {"type":"result","id":7,"result":{..}}
//!                                       or {"type":"error","id":7,"message":".."}
//!  close stdin ────────────────────────────▶ exit 0
//! ```
//!
//! A `cancel` frame asks the worker to end the run `id` now (status `cancelled`); EOF on the
//! worker's stdin (a dead manager) cancels too. See the module docs of
//! [`crate::server::pool`] for how the manager uses it.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::result::RunResult;
use crate::spec::RunSpec;

/// Largest frame either side accepts (uploads are capped far below this by the manager).
pub const MAX_FRAME: u32 = 256 << 20;

/// Frames the manager sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToWorker {
    /// Run one request.
    Run {
        /// Chosen by the manager; echoed in the answer.
        id: u64,
        /// The request.
        spec: Box<RunSpec>,
    },
    /// End the run `id` now (its status becomes `cancelled`).
    Cancel {
        /// The run.
        id: u64,
    },
}

/// What a worker's sandbox has, reported once in its `ready` frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// `v1`, `v2` or `none`.
    pub cgroup: String,
    /// cgroup controllers in use.
    pub cgroup_controllers: Vec<String>,
    /// The host uid the sandbox user maps to.
    pub host_uid: u32,
    /// The host gid the sandbox group maps to.
    #[serde(default)]
    pub host_gid: u32,
    /// The worker ends a run on a `cancel` frame (its sandbox watches the worker's stdin);
    /// without it the manager cancels by killing the worker.
    #[serde(default)]
    pub cancel_frames: bool,
}

/// Frames a worker sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromWorker {
    /// The sandbox is created; the worker waits for `run` frames.
    Ready {
        /// The worker's pid.
        pid: u32,
        /// What its sandbox has.
        info: WorkerInfo,
    },
    /// The run `id` finished (whatever the payload did).
    Result {
        /// The run.
        id: u64,
        /// The contract.
        result: Box<RunResult>,
    },
    /// The run `id` could not start or be accounted (an invalid spec, a launcher failure).
    Error {
        /// The run.
        id: u64,
        /// The error and its causes, `: `-joined.
        message: String,
        /// The request was at fault (an invalid spec), not the host.
        invalid_request: bool,
    },
    /// The worker cannot serve at all (its sandbox could not be created); it exits.
    Fatal {
        /// The error and its causes.
        message: String,
    },
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The pipe failed.
    #[error("frame i/o failed")]
    Io(#[from] std::io::Error),
    /// The length prefix is over [`MAX_FRAME`].
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced (4 for the prefix itself).
        want: usize,
    },
    /// The frame is not the expected JSON.
    #[error("malformed frame")]
    Json(#[from] serde_json::Error),
}

/// Serialize `msg` into one frame (prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    serde_json::to_writer(&mut buf, msg)?;
    let len = buf.len() - 4;
    if len > MAX_FRAME as usize {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME,
        });
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

fn check_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max: MAX_FRAME,
        });
    }
    Ok(len as usize)
}

/// Read exactly `buf.len()` bytes; `Ok(n < len)` at EOF.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Write one frame and flush.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Read one frame; `Ok(None)` on a clean EOF between frames.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, FrameError> {
    let mut prefix = [0u8; 4];
    match read_full(r, &mut prefix)? {
        0 => return Ok(None),
        4 => {}
        got => return Err(FrameError::Truncated { got, want: 4 }),
    }
    let len = check_len(prefix)?;
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(FrameError::Truncated { got, want: len });
    }
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Async [`write_frame`].
pub async fn write_frame_async<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    w.write_all(&encode(msg)?).await?;
    w.flush().await?;
    Ok(())
}

/// Async [`read_frame`].
pub async fn read_frame_async<R, T>(r: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut prefix[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated { got, want: 4 }),
            n => got += n,
        }
    }
    let len = check_len(prefix)?;
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match r.read(&mut body[got..]).await? {
            0 => return Err(FrameError::Truncated { got, want: len }),
            n => got += n,
        }
    }
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Reads frames from an async stream and is cancel-safe: bytes of a frame that has not fully
/// arrived stay buffered here when the reading future is dropped, so the next call resumes
/// the same frame instead of losing the stream's framing.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wrap a stream.
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// The next frame; `Ok(None)` on EOF between frames.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        loop {
            if self.buf.len() >= 4 {
                let len = check_len(self.buf[..4].try_into().expect("4 bytes"))?;
                if self.buf.len() >= 4 + len {
                    let msg = serde_json::from_slice(&self.buf[4..4 + len]);
                    self.buf.drain(..4 + len);
                    return Ok(Some(msg?));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            // `read` is cancel-safe: data is only consumed when it returns.
            let n = self.inner.read(&mut chunk).await?;
            if n == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    got if got < 4 => Err(FrameError::Truncated { got, want: 4 }),
                    got => Err(FrameError::Truncated {
                        got: got - 4,
                        want: check_len(self.buf[..4].try_into().expect("4 bytes"))?,
                    }),
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_frame() -> ToWorker {
        let mut spec = RunSpec::command(["python3", "-c", "print(1)"]);
        spec.stdin = Some(crate::spec::Source::Bytes(vec![0, 255, 10]));
        ToWorker::Run {
            id: 7,
            spec: Box::new(spec),
        }
    }

    #[test]
    fn frames_round_trip_sync_and_async() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &run_frame()).unwrap();
        write_frame(&mut buf, &ToWorker::Cancel { id: 7 }).unwrap();
        assert_eq!(
            u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize,
            buf.len() - 4 - encode(&ToWorker::Cancel { id: 7 }).unwrap().len()
        );
        let mut r = buf.as_slice();
        assert_eq!(
            read_frame::<_, ToWorker>(&mut r).unwrap(),
            Some(run_frame())
        );
        assert_eq!(
            read_frame::<_, ToWorker>(&mut r).unwrap(),
            Some(ToWorker::Cancel { id: 7 })
        );
        assert_eq!(read_frame::<_, ToWorker>(&mut r).unwrap(), None);

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            write_frame_async(&mut out, &run_frame()).await.unwrap();
            assert_eq!(out, encode(&run_frame()).unwrap());
            let mut r = out.as_slice();
            let back: Option<ToWorker> = read_frame_async(&mut r).await.unwrap();
            assert_eq!(back, Some(run_frame()));
            let eof: Option<ToWorker> = read_frame_async(&mut r).await.unwrap();
            assert_eq!(eof, None);
        });
    }

    #[test]
    fn the_wire_format_is_the_documented_json() {
        let frame = encode(&ToWorker::Cancel { id: 3 }).unwrap();
        assert_eq!(&frame[4..], br#"{"type":"cancel","id":3}"#);
        assert_eq!(&frame[..4], &(frame.len() as u32 - 4).to_be_bytes());
    }

    #[test]
    fn oversize_frames_are_refused_before_reading_the_body() {
        let mut buf = (MAX_FRAME + 1).to_be_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        let err = read_frame::<_, ToWorker>(&mut buf.as_slice()).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, .. } if len == u64::from(MAX_FRAME) + 1),
            "{err}"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt
            .block_on(read_frame_async::<_, ToWorker>(&mut buf.as_slice()))
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn malformed_and_truncated_frames_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0], "truncated prefix"),
            (vec![0, 0, 0, 10, b'{'], "truncated body"),
            ([&5u32.to_be_bytes()[..], b"nope!"].concat(), "not json"),
            (
                [&14u32.to_be_bytes()[..], br#"{"type":"zap"}"#].concat(),
                "unknown type",
            ),
            ([&2u32.to_be_bytes()[..], b"{}"].concat(), "no type"),
            (
                [
                    &35u32.to_be_bytes()[..],
                    br#"{"type":"cancel","id":1,"extra":2}"#,
                ]
                .concat(),
                "unknown field",
            ),
        ];
        for (bytes, what) in cases {
            let sync = read_frame::<_, ToWorker>(&mut bytes.as_slice());
            assert!(sync.is_err(), "{what}: {sync:?}");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let asynchronous = rt.block_on(read_frame_async::<_, ToWorker>(&mut bytes.as_slice()));
            assert!(asynchronous.is_err(), "{what}: {asynchronous:?}");
        }
    }

    #[test]
    fn the_frame_reader_survives_a_cancelled_read() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut tx, rx) = tokio::io::duplex(64);
            let mut reader = FrameReader::new(rx);
            let frame = encode(&ToWorker::Cancel { id: 9 }).unwrap();
            // Half a frame arrives, the reading future is dropped (cancelled)...
            tx.write_all(&frame[..7]).await.unwrap();
            let first = tokio::time::timeout(
                std::time::Duration::from_millis(50),
                reader.next::<ToWorker>(),
            )
            .await;
            assert!(first.is_err(), "no whole frame yet");
            // ...and the rest completes the same frame on the next call.
            tx.write_all(&frame[7..]).await.unwrap();
            tx.write_all(&encode(&ToWorker::Cancel { id: 10 }).unwrap())
                .await
                .unwrap();
            drop(tx);
            assert_eq!(
                reader.next::<ToWorker>().await.unwrap(),
                Some(ToWorker::Cancel { id: 9 })
            );
            assert_eq!(
                reader.next::<ToWorker>().await.unwrap(),
                Some(ToWorker::Cancel { id: 10 })
            );
            assert_eq!(reader.next::<ToWorker>().await.unwrap(), None);
        });
        rt.block_on(async {
            let (mut tx, rx) = tokio::io::duplex(64);
            tx.write_all(&[0, 0, 0, 9, b'{']).await.unwrap();
            drop(tx);
            let err = FrameReader::new(rx).next::<ToWorker>().await.unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { got: 1, want: 9 }),
                "{err}"
            );
        });
    }

    #[test]
    fn worker_frames_round_trip() {
        let frames = vec![
            FromWorker::Ready {
                pid: 42,
                info: WorkerInfo {
                    cgroup: "v1".into(),
                    cgroup_controllers: vec!["memory".into()],
                    host_uid: 2_000_000_042,
                    host_gid: 2_000_000_042,
                    cancel_frames: true,
                },
            },
            FromWorker::Error {
                id: 1,
                message: "invalid run request: no command given".into(),
                invalid_request: true,
            },
            FromWorker::Fatal {
                message: "cannot load the seccomp policy".into(),
            },
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).unwrap();
        }
        let mut r = buf.as_slice();
        for f in &frames {
            assert_eq!(
                read_frame::<_, FromWorker>(&mut r).unwrap().as_ref(),
                Some(f)
            );
        }
    }
}
