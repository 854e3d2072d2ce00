//! The durable spool: append-only segment files on local disk.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload` (one JSON
//! record). One writer thread owns the open segment and does group commit:
//! every append queued while the previous fsync ran is written and synced
//! together, so a caller waiting for durability pays one shared fsync. With
//! `require_durable = false` appends are acknowledged when queued; after
//! writing such records the thread lets [`LINGER`] pass before it looks
//! again, so a busy gateway's calls queue without waking it one by one, and
//! it syncs at least every `fsync_interval`.
//!
//! A busy gateway's durable records would otherwise arrive one or two per
//! sync: each call's record comes a few microseconds after the last sync
//! began, and an fdatasync costs the writer far more CPU than the call's own
//! work (on a virtual disk, ≈ 60 µs: two doorbell writes that exit the VM,
//! the page writeback and the flush). So a call announces its record when it
//! sends its request upstream ([`Spool::coming`]), and before syncing a batch
//! the writer waits for the announced ones, for no longer than its last sync
//! took ([`MAX_GATHER`] at most) — PostgreSQL's `commit_delay` when
//! `commit_siblings` are active. A lone call never waits; under load a sync
//! serves several, and a call waits at most one more sync's time for it.
//! Appends while the writer gathers do not wake it: only the last announced
//! record does (or the time running out), so a batch of n costs one wake-up,
//! not n.
//!
//! Segments are named by a zero-padded sequence number (`00000000000000000042.seg`)
//! and rotate at `segment_bytes`. The open segment is extended with zeros
//! ahead of the writes ([`PREALLOC`] at a time) and trimmed to its records
//! when it closes: an fdatasync after writes inside the file's size flushes
//! the data alone, while one after an append past the end must also commit
//! the file system's journal for the new size (ext4 on a virtual disk: 140
//! against 200 µs, paid by every durable call). At start the newest segment
//! is scanned and a torn tail (short frame, bad CRC, or the zeros ahead) is
//! truncated; writing then continues in a fresh segment. Readers ([`read`])
//! only see data that has been synced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

/// Largest record the spool accepts (the response body in a record is capped well below).
pub const MAX_RECORD: usize = 4 << 20;
const HEADER: usize = 8;
/// How long the writer lets records that nobody waits for gather (at most
/// `fsync_interval`).
const LINGER: Duration = Duration::from_millis(2);
/// Zeros written ahead of the open segment's records at a time.
const PREALLOC: u64 = 1 << 20;
/// Longest the writer waits for announced records before a sync.
const MAX_GATHER: Duration = Duration::from_millis(1);

/// A spool failure; the gateway fails closed on it unless configured otherwise.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// Writing or syncing failed (disk full, unwritable directory …).
    #[error("audit spool {dir}: {reason}")]
    Io { dir: String, reason: String },
    /// The spool holds more unshipped bytes than `max_spool_bytes`.
    #[error("audit spool {dir} is full ({bytes} bytes unshipped, limit {limit}); is the ClickHouse shipper running?")]
    Full { dir: String, bytes: u64, limit: u64 },
    /// One record is too large.
    #[error("audit record of {0} bytes exceeds the spool's limit of {MAX_RECORD}")]
    TooLarge(usize),
    /// An empty record (a zero-length frame reads as the zeros ahead of the writes).
    #[error("empty audit record")]
    Empty,
    /// The writer thread is gone.
    #[error("audit spool writer stopped")]
    Stopped,
}

/// A position in the spool: segment sequence number and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Segment.
    pub seq: u64,
    /// Offset within it.
    pub offset: u64,
}

/// Spool tuning.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// Directory of the segment files.
    pub dir: PathBuf,
    /// Longest time appended data stays unsynced.
    pub fsync_interval: Duration,
    /// Rotate after this many bytes.
    pub segment_bytes: u64,
    /// Refuse appends beyond this many bytes on disk.
    pub max_bytes: u64,
}

struct Shared {
    dir: PathBuf,
    durable: Mutex<Pos>,
    /// Bytes of segment files on disk.
    bytes: AtomicU64,
    max_bytes: u64,
    /// Woken when new data is durable.
    pub written: Notify,
    /// Records announced and not yet appended ([`Coming`]).
    coming: AtomicU64,
    /// Records on their way to the writer.
    queue: Mutex<Queue>,
    /// Wakes the writer; see [`WriterIs`] for when an append rings it.
    wake: Condvar,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Reply = oneshot::Sender<Result<(), SpoolError>>;

struct Queue {
    records: Vec<(Vec<u8>, Option<Reply>)>,
    writer: WriterIs,
    /// Every [`Spool`] handle is gone: the writer writes what is queued, syncs and stops.
    closed: bool,
    /// The writer thread has ended (a panic): appends fail.
    stopped: bool,
}

/// Held by the writer thread. Should it end while handles remain (a
/// panic), appends fail with [`SpoolError::Stopped`] and the calls waiting
/// for queued records are answered so, not left waiting for a sync that
/// never comes.
struct Stopping(Arc<Shared>);

impl Drop for Stopping {
    fn drop(&mut self) {
        self.0.queue().stop();
    }
}

impl Queue {
    /// The writer has ended: refuse appends, answer the waiting calls.
    fn stop(&mut self) {
        self.stopped = true;
        self.records.clear();
    }
}

/// What the writer is doing, so that a call wakes it only when it must: a
/// wake-up is a futex call for the caller and a context switch for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterIs {
    /// Writing or syncing; it looks at the queue when done.
    Working,
    /// Waiting for a record: an append wakes it.
    Idle,
    /// Waiting for announced records before a sync: only the last of them
    /// (the announcements reaching zero) wakes it, not each append.
    Gathering,
}

/// A record on its way: a call holds one from the moment it sends its
/// request upstream until it appends its record, so that the writer waits
/// for it and one sync serves both (see the module docs).
pub struct Coming {
    shared: Arc<Shared>,
    counted: bool,
}

impl Coming {
    /// Stop counting; whether this was the last announced record.
    fn arrive(&mut self) -> bool {
        std::mem::replace(&mut self.counted, false) && self.shared.coming.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

impl Drop for Coming {
    fn drop(&mut self) {
        if self.arrive() && self.shared.queue().writer == WriterIs::Gathering {
            self.shared.wake.notify_one();
        }
    }
}

/// Handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    _open: Arc<Open>,
}

/// Dropped with the last [`Spool`] handle: closes the queue.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.queue().closed = true;
        self.0.wake.notify_one();
    }
}

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Segments present.
    pub segments: usize,
    /// Bytes cut from a torn tail.
    pub truncated_bytes: u64,
}

impl Spool {
    /// Open (creating) the spool, recover a torn tail, start the writer.
    pub fn open(opts: SpoolOptions) -> Result<(Spool, Recovery), SpoolError> {
        let dir_name = opts.dir.display().to_string();
        let io_err = |e: io::Error| SpoolError::Io { dir: dir_name.clone(), reason: e.to_string() };
        fs::create_dir_all(&opts.dir).map_err(io_err)?;
        let segs = segments(&opts.dir).map_err(io_err)?;
        let mut recovery = Recovery { segments: segs.len(), truncated_bytes: 0 };
        if let Some(&last) = segs.last() {
            let path = segment_path(&opts.dir, last);
            let (good, end) = valid_prefix(&path).map_err(io_err)?;
            if good < fs::metadata(&path).map_err(io_err)?.len() {
                let f = OpenOptions::new().write(true).open(&path).map_err(io_err)?;
                f.set_len(good).map_err(io_err)?;
                f.sync_all().map_err(io_err)?;
                recovery.truncated_bytes = end - good;
            }
        }
        let mut total = 0;
        for s in &segs {
            total += fs::metadata(segment_path(&opts.dir, *s)).map(|m| m.len()).unwrap_or(0);
        }
        let seq = segs.last().map_or(1, |s| s + 1);
        let file = create_segment(&opts.dir, seq).map_err(io_err)?;
        let shared = Arc::new(Shared {
            dir: opts.dir.clone(),
            durable: Mutex::new(Pos { seq, offset: 0 }),
            bytes: AtomicU64::new(total),
            max_bytes: opts.max_bytes,
            written: Notify::new(),
            coming: AtomicU64::new(0),
            queue: Mutex::new(Queue { records: Vec::new(), writer: WriterIs::Working, closed: false, stopped: false }),
            wake: Condvar::new(),
        });
        let writer = Writer { opts, shared: shared.clone(), file, pos: Pos { seq, offset: 0 }, allocated: 0, synced: true, last_sync_took: Duration::ZERO };
        let stopping = Stopping(shared.clone());
        std::thread::Builder::new()
            .name("veil-spool".into())
            .spawn(move || {
                let _stopping = stopping;
                writer.run();
            })
            .map_err(io_err)?;
        Ok((Spool { _open: Arc::new(Open(shared.clone())), shared }, recovery))
    }

    /// Announce a record that will be appended soon; it counts until the
    /// [`Coming`] is given to [`Spool::append`] or dropped.
    pub fn coming(&self) -> Coming {
        self.shared.coming.fetch_add(1, Ordering::AcqRel);
        Coming { shared: self.shared.clone(), counted: true }
    }

    /// Append one record (`coming`: its announcement, if it had one). With
    /// `durable`, resolves once it is fsynced.
    pub async fn append(&self, payload: Vec<u8>, durable: bool, coming: Option<Coming>) -> Result<(), SpoolError> {
        match self.send(payload, durable, coming)? {
            Some(rx) => rx.await.map_err(|_| SpoolError::Stopped)?,
            None => Ok(()),
        }
    }

    /// Queue one record for the writer; with `durable`, what its answer comes on.
    fn send(&self, payload: Vec<u8>, durable: bool, mut coming: Option<Coming>) -> Result<Option<oneshot::Receiver<Result<(), SpoolError>>>, SpoolError> {
        if payload.len() > MAX_RECORD {
            return Err(SpoolError::TooLarge(payload.len()));
        }
        if payload.is_empty() {
            return Err(SpoolError::Empty);
        }
        let bytes = self.shared.bytes.load(Ordering::Relaxed);
        if bytes >= self.shared.max_bytes {
            return Err(SpoolError::Full { dir: self.dir(), bytes, limit: self.shared.max_bytes });
        }
        let (reply, rx) = if durable {
            let (reply, rx) = oneshot::channel();
            (Some(reply), Some(rx))
        } else {
            (None, None)
        };
        let mut queue = self.shared.queue();
        if queue.stopped {
            drop(queue);
            return Err(SpoolError::Stopped);
        }
        queue.records.push((payload, reply));
        // Counted off with the record queued, so that a writer gathering for
        // it wakes to find it.
        let last = coming.as_mut().is_some_and(Coming::arrive);
        let wake = queue.writer == WriterIs::Idle || (last && queue.writer == WriterIs::Gathering);
        if wake {
            queue.writer = WriterIs::Working;
        }
        drop(queue);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(rx)
    }

    /// The spool directory.
    pub fn dir(&self) -> String {
        self.shared.dir.display().to_string()
    }

    /// The end of the synced data.
    pub fn durable(&self) -> Pos {
        *self.shared.durable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until more data is durable (or `max` passes).
    pub async fn wait_written(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.shared.written.notified()).await;
    }

    /// Delete segments wholly before `pos` (shipped), keeping the current one.
    pub fn release_before(&self, pos: Pos) -> io::Result<()> {
        for seq in segments(&self.shared.dir)? {
            if seq < pos.seq {
                let path = segment_path(&self.shared.dir, seq);
                let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path)?;
                self.shared.bytes.fetch_sub(len.min(self.shared.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Bytes of segment files on disk.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }
}

struct Writer {
    opts: SpoolOptions,
    shared: Arc<Shared>,
    file: File,
    pos: Pos,
    /// End of the zeros written ahead in the open segment.
    allocated: u64,
    synced: bool,
    /// How long the last sync took: the most a batch waits for announced records.
    last_sync_took: Duration,
}

impl Writer {
    fn run(mut self) {
        let shared = self.shared.clone();
        let mut last_sync = Instant::now();
        loop {
            let mut queue = shared.queue();
            while queue.records.is_empty() {
                if queue.closed {
                    drop(queue);
                    let _ = self.sync();
                    return;
                }
                queue.writer = WriterIs::Idle;
                if self.synced {
                    queue = shared.wake.wait(queue).unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                let wait = self.opts.fsync_interval.saturating_sub(last_sync.elapsed());
                let (q, timeout) = shared.wake.wait_timeout(queue, wait).unwrap_or_else(PoisonError::into_inner);
                queue = q;
                if timeout.timed_out() && queue.records.is_empty() {
                    queue.writer = WriterIs::Working;
                    drop(queue);
                    let _ = self.sync();
                    last_sync = Instant::now();
                    queue = shared.queue();
                }
            }
            let mut batch = std::mem::take(&mut queue.records);
            let waited_for = batch.iter().any(|(_, r)| r.is_some());
            if waited_for {
                let until = Instant::now() + self.last_sync_took.min(MAX_GATHER);
                while shared.coming.load(Ordering::Acquire) > 0 && !queue.closed {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    queue.writer = WriterIs::Gathering;
                    queue = shared.wake.wait_timeout(queue, left).unwrap_or_else(PoisonError::into_inner).0;
                }
                batch.append(&mut queue.records);
            }
            queue.writer = WriterIs::Working;
            drop(queue);
            let mut buf = Vec::with_capacity(batch.iter().map(|(p, _)| p.len() + HEADER).sum());
            for (payload, _) in &batch {
                buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
                buf.extend_from_slice(payload);
            }
            let wants_sync = waited_for || last_sync.elapsed() >= self.opts.fsync_interval;
            let mut result = self.write(&buf);
            if result.is_ok() && wants_sync {
                result = self.sync();
                last_sync = Instant::now();
            }
            if result.is_ok() && self.pos.offset >= self.opts.segment_bytes {
                result = self.rotate();
            }
            for (_, reply) in batch {
                if let Some(r) = reply {
                    let _ = r.send(result.clone());
                }
            }
            if !waited_for {
                // Appends while this sleeps find no receiver to wake.
                std::thread::sleep(LINGER.min(self.opts.fsync_interval));
            }
        }
    }

    fn err(&self, e: io::Error) -> SpoolError {
        SpoolError::Io { dir: self.opts.dir.display().to_string(), reason: e.to_string() }
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), SpoolError> {
        let end = self.pos.offset + buf.len() as u64;
        let written = self.preallocate(end).and_then(|()| self.file.write_all_at(buf, self.pos.offset));
        if let Err(e) = written {
            // Cut any partial frame so the segment stays readable.
            let _ = self.file.set_len(self.pos.offset);
            self.allocated = self.pos.offset;
            return Err(self.err(e));
        }
        self.pos.offset += buf.len() as u64;
        self.shared.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.synced = false;
        Ok(())
    }

    /// Make the segment's zeros reach at least `end` (see the module's doc).
    /// The next sync commits the new size, once per [`PREALLOC`] bytes.
    fn preallocate(&mut self, end: u64) -> io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let to = end + PREALLOC;
        let zeros = vec![0u8; usize::try_from(to - self.allocated).map_err(io::Error::other)?];
        self.file.write_all_at(&zeros, self.allocated)?;
        self.allocated = to;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SpoolError> {
        if self.synced {
            return Ok(());
        }
        let started = Instant::now();
        self.file.sync_data().map_err(|e| self.err(e))?;
        self.last_sync_took = started.elapsed();
        self.synced = true;
        *self.shared.durable.lock().unwrap_or_else(|p| p.into_inner()) = self.pos;
        self.shared.written.notify_waiters();
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        // A closed segment holds its records and nothing after them.
        self.file.set_len(self.pos.offset).and_then(|()| self.file.sync_data()).map_err(|e| self.err(e))?;
        let seq = self.pos.seq + 1;
        self.file = create_segment(&self.opts.dir, seq).map_err(|e| self.err(e))?;
        self.pos = Pos { seq, offset: 0 };
        self.allocated = 0;
        *self.shared.durable.lock().unwrap_or_else(|p| p.into_inner()) = self.pos;
        Ok(())
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(segment_path(dir, seq))?;
    // Make the new file's directory entry durable too.
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// Segment sequence numbers in `dir`, ascending.
pub fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name.strip_suffix(".seg").and_then(|s| s.parse::<u64>().ok()) {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Length of the longest prefix of whole, CRC-valid frames, and the end of
/// what was written after it (a torn frame; the zeros ahead do not count).
fn valid_prefix(path: &Path) -> io::Result<(u64, u64)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut off = 0usize;
    while let Some((_, next)) = frame_at(&data, off) {
        off = next;
    }
    let end = data.iter().rposition(|&b| b != 0).map_or(off, |i| (i + 1).max(off));
    Ok((off as u64, end as u64))
}

/// The frame at `off`: its payload and the next offset; None if torn or bad.
pub fn frame_at(data: &[u8], off: usize) -> Option<(&[u8], usize)> {
    let header = data.get(off..off.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let start = off + HEADER;
    let payload = data.get(start..start.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some((payload, start + len))
}

/// Read whole records from `from` up to `until` (exclusive), at most `max`.
/// Returns the payloads and the position after the last one. A corrupt frame
/// in the middle of a closed segment skips the rest of that segment (logged).
pub fn read(dir: &Path, from: Pos, until: Pos, max: usize) -> io::Result<(Vec<Vec<u8>>, Pos)> {
    let mut out = Vec::new();
    let mut pos = from;
    for seq in segments(dir)? {
        if seq < pos.seq {
            continue;
        }
        if seq > until.seq {
            break;
        }
        if seq > pos.seq {
            pos = Pos { seq, offset: 0 };
        }
        let end = if seq == until.seq { until.offset } else { u64::MAX };
        let mut f = File::open(segment_path(dir, seq))?;
        f.seek(SeekFrom::Start(pos.offset))?;
        let mut data = Vec::new();
        f.take(end.saturating_sub(pos.offset)).read_to_end(&mut data)?;
        let mut off = 0usize;
        while out.len() < max {
            match frame_at(&data, off) {
                Some((payload, next)) => {
                    out.push(payload.to_vec());
                    off = next;
                }
                None => break,
            }
        }
        pos.offset += off as u64;
        if out.len() >= max {
            return Ok((out, pos));
        }
        if seq < until.seq {
            if off < data.len() {
                tracing::error!(segment = seq, offset = pos.offset, bytes = data.len() - off, "audit spool: corrupt frame in a closed segment; skipping its rest");
            }
            // Move on to the next segment.
            pos = Pos { seq: seq + 1, offset: 0 };
        }
    }
    Ok((out, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> SpoolOptions {
        SpoolOptions { dir: dir.to_path_buf(), fsync_interval: Duration::from_millis(5), segment_bytes: 200, max_bytes: 1 << 30 }
    }

    #[tokio::test]
    async fn appends_rotate_and_read_back_in_order() {
        let d = tempfile::tempdir().unwrap();
        let (spool, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!(rec.segments, 0);
        for i in 0..50 {
            spool.append(format!("record-{i:03}").into_bytes(), true, None).await.unwrap();
        }
        assert!(segments(d.path()).unwrap().len() > 2, "rotates at segment_bytes");
        let (all, end) = read(d.path(), Pos::default(), spool.durable(), usize::MAX).unwrap();
        assert_eq!(all.len(), 50);
        assert_eq!(all[7], b"record-007");
        assert_eq!(end, spool.durable());
        // Paged reads see the same records.
        let (first, p) = read(d.path(), Pos::default(), spool.durable(), 20).unwrap();
        let (rest, _) = read(d.path(), p, spool.durable(), usize::MAX).unwrap();
        assert_eq!([first, rest].concat(), all);
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_and_the_rest_kept() {
        let d = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(SpoolOptions { segment_bytes: 1 << 20, ..opts(d.path()) }).unwrap();
            for i in 0..3 {
                spool.append(format!("r{i}").into_bytes(), true, None).await.unwrap();
            }
        }
        // A torn frame after the records, in the zeros written ahead.
        let seg = segment_path(d.path(), 1);
        let records = 3 * (HEADER as u64 + 2);
        assert!(fs::metadata(&seg).unwrap().len() > records, "the open segment has zeros ahead");
        OpenOptions::new().write(true).open(&seg).unwrap().write_all_at(&[200, 0, 0, 0, 1, 2, 3, 4, b'x'], records).unwrap();
        let (spool, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!(rec.truncated_bytes, 9);
        assert_eq!(fs::metadata(&seg).unwrap().len(), records, "cut to the whole frames");
        spool.append(b"after".to_vec(), true, None).await.unwrap();
        let (all, _) = read(d.path(), Pos::default(), spool.durable(), usize::MAX).unwrap();
        assert_eq!(all, vec![b"r0".to_vec(), b"r1".to_vec(), b"r2".to_vec(), b"after".to_vec()]);
    }

    #[tokio::test]
    async fn bad_crc_is_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(SpoolOptions { segment_bytes: 1 << 20, ..opts(d.path()) }).unwrap();
            spool.append(b"good".to_vec(), true, None).await.unwrap();
            spool.append(b"flipped".to_vec(), true, None).await.unwrap();
        }
        let seg = segment_path(d.path(), 1);
        let mut data = fs::read(&seg).unwrap();
        let n = 2 * HEADER + 4 + 7;
        data[n - 1] ^= 0xff;
        fs::write(&seg, data).unwrap();
        let (spool, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!(rec.truncated_bytes, (HEADER + 7) as u64);
        let (all, _) = read(d.path(), Pos::default(), spool.durable(), usize::MAX).unwrap();
        assert_eq!(all, vec![b"good".to_vec()]);
    }

    #[tokio::test]
    async fn zeros_ahead_are_not_records_and_closed_segments_are_trimmed() {
        let d = tempfile::tempdir().unwrap();
        let frames = |n: u64| n * (HEADER as u64 + 8);
        {
            let (spool, _) = Spool::open(SpoolOptions { segment_bytes: frames(10), ..opts(d.path()) }).unwrap();
            for i in 0..15 {
                spool.append(format!("record{i:02}").into_bytes(), true, None).await.unwrap();
            }
            assert_eq!(fs::metadata(segment_path(d.path(), 1)).unwrap().len(), frames(10), "a closed segment holds its records only");
            assert!(fs::metadata(segment_path(d.path(), 2)).unwrap().len() >= PREALLOC, "the open one has zeros ahead");
            let (all, _) = read(d.path(), Pos::default(), spool.durable(), usize::MAX).unwrap();
            assert_eq!(all.len(), 15);
        }
        // As after a crash: the open segment still has its zeros; they are
        // no torn record, and the records before them are all kept.
        let (spool, rec) = Spool::open(opts(d.path())).unwrap();
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(fs::metadata(segment_path(d.path(), 2)).unwrap().len(), frames(5));
        assert!(matches!(spool.append(Vec::new(), true, None).await, Err(SpoolError::Empty)));
        spool.append(b"after".to_vec(), true, None).await.unwrap();
        let (all, _) = read(d.path(), Pos::default(), spool.durable(), usize::MAX).unwrap();
        assert_eq!((all.len(), all[14].as_slice(), all[15].as_slice()), (16, &b"record14"[..], &b"after"[..]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn announced_records_are_appended_and_one_that_never_comes_holds_none_up() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(opts(dir.path())).unwrap();
        spool.append(b"first".to_vec(), true, None).await.unwrap();
        // An announced record arriving while another waits for its sync.
        let later = spool.coming();
        let s = spool.clone();
        let waiting = tokio::spawn(async move { s.append(b"waits".to_vec(), true, None).await });
        tokio::time::sleep(Duration::from_micros(100)).await;
        spool.append(b"announced".to_vec(), true, Some(later)).await.unwrap();
        waiting.await.unwrap().unwrap();
        // An announcement that is never appended: every durable append still
        // completes (each waits at most one sync's time).
        let never = spool.coming();
        for i in 0..50 {
            tokio::time::timeout(Duration::from_secs(10), spool.append(format!("r{i}").into_bytes(), true, None)).await.expect("not held up").unwrap();
        }
        drop(never);
        assert_eq!(spool.shared.coming.load(Ordering::Acquire), 0);
        let (recs, _) = read(dir.path(), Pos::default(), spool.durable(), 100).unwrap();
        assert_eq!(recs.len(), 53);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_announced_appends_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(SpoolOptions { segment_bytes: 1 << 20, ..opts(dir.path()) }).unwrap();
        // Callers announce, do their "upstream call", and append, while others
        // append without announcing and some announce and fail: a wake-up the
        // writer missed would leave a caller waiting for its sync forever.
        let calls = (0..300u32).map(|i| {
            let s = spool.clone();
            tokio::spawn(async move {
                let coming = (i % 3 != 0).then(|| s.coming());
                tokio::task::yield_now().await;
                if i % 7 == 0 {
                    drop(coming);
                    return None;
                }
                s.append(format!("call-{i:03}").into_bytes(), i % 5 != 0, coming).await.unwrap();
                Some(s.durable())
            })
        });
        let mut appended = 0;
        for call in calls.collect::<Vec<_>>() {
            let done = tokio::time::timeout(Duration::from_secs(10), call).await.expect("every append completes").unwrap();
            appended += usize::from(done.is_some());
        }
        assert_eq!(spool.shared.coming.load(Ordering::Acquire), 0);
        spool.append(b"last".to_vec(), true, None).await.unwrap();
        let (recs, _) = read(dir.path(), Pos::default(), spool.durable(), usize::MAX).unwrap();
        assert_eq!(recs.len(), appended + 1);
    }

    #[tokio::test]
    async fn appends_fail_once_the_writer_has_stopped() {
        let d = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(opts(d.path())).unwrap();
        // A record queued and not yet taken when the writer thread ends, as
        // in a panic (one lock held: the live writer cannot take it).
        let (reply, waiting) = oneshot::channel();
        {
            let mut queue = spool.shared.queue();
            queue.records.push((b"queued".to_vec(), Some(reply)));
            queue.stop();
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the waiting call is answered");
        assert!(answer.is_err(), "with the writer's end");
        assert!(matches!(spool.append(b"later".to_vec(), true, Some(spool.coming())).await, Err(SpoolError::Stopped)));
        assert!(matches!(spool.append(b"later".to_vec(), false, None).await, Err(SpoolError::Stopped)));
        assert_eq!(spool.shared.coming.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn records_nobody_waits_for_are_written_and_synced_by_the_interval() {
        let d = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(SpoolOptions { segment_bytes: 1 << 20, ..opts(d.path()) }).unwrap();
        for i in 0..100 {
            spool.append(format!("quick-{i:03}").into_bytes(), false, None).await.unwrap();
        }
        // Acknowledged at once; on disk and synced within a few intervals.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (all, _) = read(d.path(), Pos::default(), spool.durable(), usize::MAX).unwrap();
            if all.len() == 100 {
                assert_eq!((all[0].as_slice(), all[99].as_slice()), (&b"quick-000"[..], &b"quick-099"[..]));
                break;
            }
            assert!(Instant::now() < deadline, "only {} of 100 records synced", all.len());
            spool.wait_written(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn full_spool_refuses_and_release_frees() {
        let d = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(SpoolOptions { max_bytes: 100, segment_bytes: 50, ..opts(d.path()) }).unwrap();
        let mut refused = None;
        for i in 0..20 {
            if let Err(e) = spool.append(vec![b'a'; 30], true, None).await {
                refused = Some((i, e));
                break;
            }
        }
        let (_, e) = refused.expect("a full spool refuses appends");
        assert!(matches!(e, SpoolError::Full { .. }), "{e}");
        spool.release_before(spool.durable()).unwrap();
        spool.append(b"fits again".to_vec(), true, None).await.unwrap();
    }

    #[tokio::test]
    async fn unwritable_spool_fails_with_the_directory_named() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let e = Spool::open(opts(&file)).err().expect("cannot open a spool in a file");
        assert!(e.to_string().contains("not-a-dir"), "{e}");
    }
}
