//! Code packages: reading `--code`, and streaming it up in 1 MiB chunks
//! with a progress bar for large packages.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use futures::Stream;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use nubo_proto::v1 as pb;

use crate::zipdir;

/// Size of each code message in a streamed upload.
const CHUNK_SIZE: usize = 1 << 20;

/// Packages above this get a progress bar when stderr is a terminal.
const PROGRESS_THRESHOLD: usize = 4 << 20;

/// Reads `--code`: a directory is zipped in memory, a .zip file is sent as is.
pub fn load_code(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("--code {}", path.display()))?;
    if meta.is_dir() {
        let bytes = zipdir::zip_dir(path)
            .with_context(|| format!("packaging directory {}", path.display()))?;
        return Ok(bytes);
    }
    let is_zip_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
    if !is_zip_name {
        bail!(
            "--code {}: expected a directory or a .zip file",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // Local file header, or the end record of an empty archive.
    if !(bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")) {
        bail!("--code {}: not a zip archive", path.display());
    }
    Ok(bytes)
}

pub(super) fn chunk_msg(part: pb::create_function_chunk::Part) -> pb::CreateFunctionChunk {
    pb::CreateFunctionChunk { part: Some(part) }
}

pub(super) fn code_msg(part: pb::update_function_code_chunk::Part) -> pb::UpdateFunctionCodeChunk {
    pb::UpdateFunctionCodeChunk { part: Some(part) }
}

/// The upload stream: `head`, then the package in 1 MiB pieces. Built anew
/// for each attempt from the bytes kept in memory, so a failover can resend.
fn chunk_stream<M: Send + 'static>(
    head: M,
    code: Arc<Vec<u8>>,
    progress: Option<ProgressBar>,
    sent: Arc<AtomicU64>,
    wrap: fn(Vec<u8>) -> M,
) -> impl Stream<Item = M> + Send + 'static {
    if let Some(p) = &progress {
        p.set_position(0);
    }
    sent.store(0, Ordering::Relaxed);
    let pieces = code.len().div_ceil(CHUNK_SIZE);
    let chunks = (0..pieces).map(move |i| {
        let lo = i * CHUNK_SIZE;
        let hi = (lo + CHUNK_SIZE).min(code.len());
        // A piece is pulled once the previous ones went to the transport.
        if let Some(p) = &progress {
            p.set_position(lo as u64);
        }
        sent.store(lo as u64, Ordering::Relaxed);
        wrap(code[lo..hi].to_vec())
    });
    futures::stream::iter(std::iter::once(head).chain(chunks))
}

/// Uploads `code` through `rpc` (CreateFunction or UpdateFunctionCode),
/// with a progress bar, failing over like any long call: each attempt gets
/// a fresh stream of `head` then the package's pieces (`wrap`). A broken
/// upload is reported with how far it got ([`upload_error`]).
pub(super) async fn upload<M, T, F, Fut>(
    client: &nubo_client::Client,
    code: Arc<Vec<u8>>,
    head: M,
    wrap: fn(Vec<u8>) -> M,
    mut rpc: F,
) -> anyhow::Result<T>
where
    M: Clone + Send + 'static,
    F: FnMut(nubo_client::Conn, futures::stream::BoxStream<'static, M>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    use futures::StreamExt;
    let progress = upload_progress(code.len());
    let sent = Arc::new(AtomicU64::new(0));
    let res = client
        .call_long(|c| {
            let stream = chunk_stream(
                head.clone(),
                code.clone(),
                progress.clone(),
                sent.clone(),
                wrap,
            )
            .boxed();
            rpc(c, stream)
        })
        .await;
    finish_progress(progress, res.is_ok());
    res.map_err(|e| upload_error(e, code.len(), &sent))
}

/// The error of a failed upload: when the connection broke while the
/// package was on its way (the controller died mid-stream), that is what
/// the user hears first, with how far it got, even if the retries then
/// only failed to connect; a controller's answer stays as it is.
fn upload_error(status: tonic::Status, size: usize, sent: &AtomicU64) -> anyhow::Error {
    if !nubo_client::is_broken_call(&status) {
        return status.into();
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let sent = sent.load(Ordering::Relaxed).min(size as u64);
    anyhow::Error::new(status).context(format!(
        "the upload of the code package ({:.1} MiB) broke with {:.1} MiB sent",
        mib(size as u64),
        mib(sent)
    ))
}

fn upload_progress(size: usize) -> Option<ProgressBar> {
    let forced = match std::env::var("NUBO_PROGRESS").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    };
    let tty = std::io::stderr().is_terminal();
    let show = forced.unwrap_or(tty && size > PROGRESS_THRESHOLD);
    if !show {
        return None;
    }
    let target = if tty {
        ProgressDrawTarget::stderr()
    } else {
        // Not a terminal (forced): one plain line per second, no escapes.
        ProgressDrawTarget::term_like_with_hz(Box::new(LineTerm::default()), 1)
    };
    let pb = ProgressBar::with_draw_target(Some(size as u64), target);
    let style = ProgressStyle::with_template(
        "uploading [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    Some(pb)
}

/// Ends the bar: full on success; left where the upload stopped when it
/// failed (a full bar over an error would say the bytes arrived).
fn finish_progress(progress: Option<ProgressBar>, ok: bool) {
    if let Some(p) = progress {
        if !ok {
            p.abandon();
        } else if std::io::stderr().is_terminal() {
            p.finish_and_clear();
        } else {
            p.finish();
        }
    }
}

/// A progress-bar "terminal" for logs: a redraw becomes one plain line, at
/// most one a second (indicatif's own limiter lets bursts through); the last
/// state is printed when the bar goes away.
#[derive(Debug, Default)]
struct LineTerm {
    state: Mutex<LineState>,
}

#[derive(Debug, Default)]
struct LineState {
    buf: String,
    pending: Option<String>,
    last_print: Option<std::time::Instant>,
}

impl LineTerm {
    fn emit(line: &str) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
        let _ = err.flush();
    }
}

impl Drop for LineTerm {
    fn drop(&mut self) {
        if let Some(line) = self.state.lock().expect("lock poisoned").pending.take() {
            LineTerm::emit(&line);
        }
    }
}

impl TermLike for LineTerm {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        let mut st = self.state.lock().expect("lock poisoned");
        st.buf.push_str(s);
        st.buf.push('\n');
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.state.lock().expect("lock poisoned").buf.push_str(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        let mut st = self.state.lock().expect("lock poisoned");
        let text = std::mem::take(&mut st.buf);
        let Some(line) = text
            .split(['\n', '\r'])
            .map(str::trim_end)
            .rfind(|l| !l.trim().is_empty())
        else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        if st
            .last_print
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1))
        {
            st.pending = Some(line.to_string());
        } else {
            st.pending = None;
            st.last_print = Some(now);
            LineTerm::emit(line);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn upload_stream_is_header_then_mib_chunks() {
        let code = Arc::new(vec![7u8; CHUNK_SIZE * 2 + 5]);
        let msgs: Vec<pb::CreateFunctionChunk> = chunk_stream(
            chunk_msg(pb::create_function_chunk::Part::Header(Default::default())),
            code,
            None,
            Arc::default(),
            |b| chunk_msg(pb::create_function_chunk::Part::Code(b)),
        )
        .collect()
        .await;
        use pb::create_function_chunk::Part;
        assert!(matches!(msgs[0].part, Some(Part::Header(_))));
        let sizes: Vec<usize> = msgs[1..]
            .iter()
            .map(|m| match &m.part {
                Some(Part::Code(b)) => b.len(),
                _ => panic!("expected code"),
            })
            .collect();
        assert_eq!(sizes, [CHUNK_SIZE, CHUNK_SIZE, 5]);
    }

    #[test]
    fn code_path_must_be_dir_or_zip() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("app.py");
        std::fs::write(&f, "x").unwrap();
        assert!(load_code(&f).unwrap_err().to_string().contains(".zip"));
        let z = tmp.path().join("bad.zip");
        std::fs::write(&z, "not a zip").unwrap();
        assert!(load_code(&z).unwrap_err().to_string().contains("not a zip"));
        std::fs::write(tmp.path().join("app.py"), "x").unwrap();
        let bytes = load_code(tmp.path()).unwrap();
        assert!(bytes.starts_with(b"PK"));
    }
}
