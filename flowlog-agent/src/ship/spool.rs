//! On-disk spool: every batch of records is appended here before any
//! destination sees it, and removed only when every destination has
//! acknowledged it.
//!
//! The directory is `0700` and every file in it `0600` (flow records are
//! not for every local account); a spool made looser by an older version
//! is tightened when opened, a tighter one left as it is.
//!
//! Layout of the spool directory:
//! - `seg-<20-digit id>.spool`: append-only segments of frames
//!   `[len u32 LE][crc32 u32 LE][payload]`, one frame per [`Batch`];
//! - `cursor-<destination>`: the position (`<segment id> <offset>`) up to
//!   which that destination acknowledged, replaced atomically (write + rename).
//!
//! A torn frame at the end of the last segment (the agent was killed while
//! writing) is cut off when the spool is opened. When the total size passes
//! the bound, the oldest segment is deleted even if some destination has not
//! acknowledged it; the records lost that way are counted
//! ([`SpoolStats::dropped_records`]) and logged, never dropped silently.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::perm;

/// Mode of the spool directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files in it (segments, cursors, lock).
pub const FILE_MODE: u32 = 0o600;

/// One record as spooled: what every destination needs, already formatted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolRecord {
    pub interface_id: String,
    /// Unix seconds.
    pub start: u64,
    /// Unix seconds.
    pub end: u64,
    /// The record's text line, without terminator.
    pub line: String,
}

/// The records of one aggregation window, with the header line (field names)
/// of the format they were written in.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Batch {
    pub header: String,
    pub records: Vec<SpoolRecord>,
}

/// Appends one record in the spool's encoding: what [`Batch::encode`] writes
/// per record. The agent encodes a window's records as it formats them
/// ([`Spool::append_encoded`]), never holding them as [`SpoolRecord`]s.
pub fn encode_record(out: &mut Vec<u8>, start: u64, end: u64, interface_id: &str, line: &[u8]) {
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&end.to_le_bytes());
    put_bytes(out, interface_id.as_bytes());
    put_bytes(out, line);
}

/// What precedes a batch's records in its encoding.
fn encode_head(out: &mut Vec<u8>, header: &str, records: usize) {
    put_bytes(out, header.as_bytes());
    out.extend_from_slice(&(records as u32).to_le_bytes());
}

impl Batch {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.header.len() + self.records.iter().map(|r| r.line.len() + r.interface_id.len() + 24).sum::<usize>());
        encode_head(&mut out, &self.header, self.records.len());
        for r in &self.records {
            encode_record(&mut out, r.start, r.end, &r.interface_id, r.line.as_bytes());
        }
        out
    }

    pub fn decode(mut b: &[u8]) -> Result<Batch> {
        let header = get_string(&mut b)?;
        let n = get_u32(&mut b)? as usize;
        let mut records = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let start = get_u64(&mut b)?;
            let end = get_u64(&mut b)?;
            let interface_id = get_string(&mut b)?;
            let line = get_string(&mut b)?;
            records.push(SpoolRecord { interface_id, start, end, line });
        }
        if !b.is_empty() {
            bail!("{} trailing bytes in a spooled batch", b.len());
        }
        Ok(Batch { header, records })
    }

    /// Text bytes of the records (lines plus newlines).
    pub fn text_len(&self) -> usize {
        self.records.iter().map(|r| r.line.len() + 1).sum()
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}
fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if b.len() < n {
        bail!("truncated spooled batch");
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}
fn get_u32(b: &mut &[u8]) -> Result<u32> {
    Ok(u32::from_le_bytes(take(b, 4)?.try_into().unwrap()))
}
fn get_u64(b: &mut &[u8]) -> Result<u64> {
    Ok(u64::from_le_bytes(take(b, 8)?.try_into().unwrap()))
}
fn get_string(b: &mut &[u8]) -> Result<String> {
    let n = get_u32(b)? as usize;
    Ok(String::from_utf8(take(b, n)?.to_vec())?)
}

/// A place in the spool: segment id and byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
}

const FRAME_HEADER: u64 = 8;
/// A frame larger than this is taken for garbage.
const MAX_FRAME: u64 = 1 << 30;

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct SpoolStats {
    pub appended_batches: AtomicU64,
    pub dropped_segments: AtomicU64,
    /// Records deleted because the spool was full before every destination
    /// had acknowledged them (counted once per destination that lost them).
    pub dropped_records: AtomicU64,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    segment_max: u64,
    /// Committed size of every segment, oldest first.
    segments: BTreeMap<u64, u64>,
    active: File,
    /// Acknowledged position of each configured destination.
    cursors: HashMap<String, Pos>,
    /// Per frame some destination still waits for: where it ends and the
    /// window end (Unix seconds) of its first record, oldest first. Only
    /// for the `spool_oldest_record_age_seconds` metric: a destination that
    /// stalls shows as a growing age long before the spool fills.
    waiting: VecDeque<(Pos, u64)>,
    /// Holds the spool's `flock` (one agent per spool directory).
    _lock: File,
}

/// The spool. Cheap to clone; the writer and every reader share it.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Mutex<Inner>>,
    tx: Arc<watch::Sender<u64>>,
    pub stats: Arc<SpoolStats>,
}

/// Opens a segment for appending (created `0600`; the existing active one
/// was tightened when the spool was opened).
fn new_segment(path: &Path) -> std::io::Result<File> {
    perm::open_append(path, FILE_MODE).map(|(f, _)| f)
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:020}.spool"))
}

/// Destination names are URLs; cursor files get a safe version of them.
pub fn cursor_file_name(dest: &str) -> String {
    let safe: String = dest.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect();
    let h = crc32fast::hash(dest.as_bytes());
    format!("cursor-{safe}-{h:08x}")
}

/// Reads the frame at `offset`; `Ok(None)` when there is no complete, valid
/// frame there (end of data or torn write).
fn read_frame(f: &mut File, offset: u64, limit: u64) -> Result<Option<(Vec<u8>, u64)>> {
    if offset + FRAME_HEADER > limit {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut h = [0u8; 8];
    f.read_exact(&mut h)?;
    let len = u32::from_le_bytes(h[..4].try_into().unwrap()) as u64;
    let crc = u32::from_le_bytes(h[4..].try_into().unwrap());
    if len > MAX_FRAME || offset + FRAME_HEADER + len > limit {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    f.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    Ok(Some((payload, offset + FRAME_HEADER + len)))
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` for the given
    /// destinations. A destination without a cursor starts at the oldest data.
    pub fn open(dir: &Path, max_bytes: u64, destinations: &[String]) -> Result<Spool> {
        if let Some((was, now)) = perm::create_dir(dir, DIR_MODE).with_context(|| format!("spool directory {}: cannot create it", dir.display()))? {
            info!(dir = %dir.display(), "spool: directory mode tightened from {was:04o} to {now:04o}");
        }
        // Fail now, with a clear message, if the directory is not writable.
        let probe = dir.join(".probe");
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .with_context(|| format!("spool directory {}: not writable", dir.display()))?;
        let _ = fs::remove_file(&probe);
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).mode(FILE_MODE).open(&lock_path).with_context(|| format!("spool directory {}: cannot open its lock file", dir.display()))?;
        // SAFETY: flock on a valid fd; released when the file is closed or the process dies.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!("spool directory {} is in use by another flowlog-agent (give each agent its own --spool-dir)", dir.display());
        }
        let rd = fs::read_dir(dir).with_context(|| format!("spool directory {}: cannot list it", dir.display()))?;
        let mut segments = BTreeMap::new();
        let mut tightened = 0;
        for e in rd {
            let e = e?;
            if e.file_type()?.is_file() && perm::tighten(&e.path(), FILE_MODE).with_context(|| format!("spool file {}: cannot set its mode", e.path().display()))?.is_some() {
                tightened += 1;
            }
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_prefix("seg-").and_then(|n| n.strip_suffix(".spool")).and_then(|n| n.parse::<u64>().ok()) {
                segments.insert(id, e.metadata()?.len());
            }
        }
        if tightened > 0 {
            info!(dir = %dir.display(), files = tightened, "spool: file modes tightened to {FILE_MODE:04o} (made by an older version, readable by other local users)");
        }
        // Validate every segment's frames and cut torn tails (normally only
        // the last one can have one).
        let mut waiting = VecDeque::new();
        for (id, size) in segments.iter_mut() {
            let path = seg_path(dir, *id);
            let mut f = OpenOptions::new().read(true).write(true).open(&path).with_context(|| format!("spool segment {}: cannot open it", path.display()))?;
            let mut off = 0;
            while let Some((payload, next)) = read_frame(&mut f, off, *size)? {
                off = next;
                if let Some(t) = first_record_end(&payload) {
                    waiting.push_back((Pos { segment: *id, offset: off }, t));
                }
            }
            if off != *size {
                warn!(segment = %path.display(), valid = off, size = *size, "spool: cutting a torn frame (the agent stopped while writing)");
                f.set_len(off)?;
                *size = off;
            }
        }
        let active_id = segments.keys().next_back().copied().unwrap_or(1);
        segments.entry(active_id).or_insert(0);
        let path = seg_path(dir, active_id);
        let active = new_segment(&path).with_context(|| format!("spool segment {}: cannot open it", path.display()))?;
        let oldest = Pos { segment: *segments.keys().next().unwrap(), offset: 0 };
        let mut cursors = HashMap::new();
        for d in destinations {
            let p = dir.join(cursor_file_name(d));
            let pos = match fs::read_to_string(&p) {
                Ok(s) => {
                    let mut it = s.split_whitespace().map(|x| x.parse::<u64>());
                    match (it.next(), it.next()) {
                        (Some(Ok(segment)), Some(Ok(offset))) => Pos { segment, offset },
                        _ => {
                            warn!(file = %p.display(), "spool: unreadable cursor; delivering from the oldest data");
                            oldest
                        }
                    }
                }
                Err(_) => oldest,
            };
            cursors.insert(d.clone(), pos.max(oldest));
        }
        let total: u64 = segments.values().sum();
        debug!(dir = %dir.display(), segments = segments.len(), bytes = total, "spool opened");
        let (tx, _) = watch::channel(0);
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_max: (max_bytes / 8).clamp(64 << 10, 64 << 20),
            segments,
            active,
            cursors,
            waiting,
            _lock: lock,
        };
        inner.forget_delivered();
        Ok(Spool {
            inner: Arc::new(Mutex::new(inner)),
            tx: Arc::new(tx),
            stats: Arc::new(SpoolStats::default()),
        })
    }

    /// Total bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().unwrap().segments.values().sum()
    }

    /// Records not yet acknowledged by `dest` (reads the spool; for tests and logs).
    pub fn pending_records(&self, dest: &str) -> Result<u64> {
        let mut r = self.reader(dest);
        let mut n = 0;
        while let Some((b, _)) = r.next_batch()? {
            n += b.records.len() as u64;
        }
        Ok(n)
    }

    /// Appends a batch (durable against a crash of the agent once this
    /// returns; `fdatasync`ed against a crash of the machine).
    pub fn append(&self, batch: &Batch) -> Result<Pos> {
        let mut records = Vec::new();
        for r in &batch.records {
            encode_record(&mut records, r.start, r.end, &r.interface_id, r.line.as_bytes());
        }
        let oldest_end = batch.records.iter().map(|r| r.end).min();
        self.append_encoded(&batch.header, batch.records.len(), &[&records], oldest_end)
    }

    /// [`Spool::append`] of a batch whose records are already encoded
    /// ([`encode_record`]): `records` of them in the `encoded` buffers, in
    /// order, the earliest record end `oldest_end` (none: no records).
    /// Written as they are, with no copy into one frame.
    pub fn append_encoded(&self, header: &str, records: usize, encoded: &[&[u8]], oldest_end: Option<u64>) -> Result<Pos> {
        let mut head = Vec::with_capacity(header.len() + 8);
        encode_head(&mut head, header, records);
        let payload_len = head.len() + encoded.iter().map(|b| b.len()).sum::<usize>();
        // The reader takes a larger frame for garbage.
        anyhow::ensure!(payload_len as u64 <= MAX_FRAME, "a batch of {records} records is {payload_len} bytes, over the spool's frame limit of {MAX_FRAME}");
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        encoded.iter().for_each(|b| crc.update(b));
        let mut frame_head = Vec::with_capacity(8);
        frame_head.extend_from_slice(&(payload_len as u32).to_le_bytes());
        frame_head.extend_from_slice(&crc.finalize().to_le_bytes());
        let frame_len = (frame_head.len() + payload_len) as u64;
        let mut g = self.inner.lock().unwrap();
        let inner = &mut *g;
        let (&active_id, &size) = inner.segments.iter().next_back().unwrap();
        let (active_id, size) = if size > 0 && size + frame_len > inner.segment_max {
            let id = active_id + 1;
            let path = seg_path(&inner.dir, id);
            inner.active = new_segment(&path).with_context(|| format!("spool segment {}", path.display()))?;
            inner.segments.insert(id, 0);
            (id, 0)
        } else {
            (active_id, size)
        };
        let written = [&frame_head[..], &head[..]].into_iter().chain(encoded.iter().copied()).try_for_each(|b| inner.active.write_all(b));
        if let Err(e) = written.and_then(|_| inner.active.sync_data()) {
            // Undo a partial write so the segment stays readable.
            let _ = inner.active.set_len(size);
            return Err(e).context("appending to the spool");
        }
        let end = size + frame_len;
        inner.segments.insert(active_id, end);
        if let Some(t) = oldest_end {
            inner.waiting.push_back((Pos { segment: active_id, offset: end }, t));
        }
        self.stats.appended_batches.fetch_add(1, Ordering::Relaxed);
        Self::enforce_bound(inner, &self.stats);
        drop(g);
        self.tx.send_modify(|n| *n += 1);
        Ok(Pos { segment: active_id, offset: end })
    }

    /// Deletes the oldest segments while the spool is over its bound.
    fn enforce_bound(inner: &mut Inner, stats: &SpoolStats) {
        loop {
            let total: u64 = inner.segments.values().sum();
            if total <= inner.max_bytes || inner.segments.len() < 2 {
                return;
            }
            let (&id, &size) = inner.segments.iter().next().unwrap();
            // Count what each destination loses.
            let mut lost = 0u64;
            let path = seg_path(&inner.dir, id);
            for (dest, cur) in inner.cursors.iter() {
                if cur.segment > id {
                    continue;
                }
                let from = if cur.segment == id { cur.offset } else { 0 };
                let n = count_records(&path, from, size).unwrap_or(0);
                if n > 0 {
                    warn!(destination = %dest, records = n, "spool full (--spool-max-bytes): dropping the oldest records before this destination acknowledged them");
                }
                lost += n;
            }
            let _ = fs::remove_file(&path);
            inner.segments.remove(&id);
            let next = Pos { segment: *inner.segments.keys().next().unwrap(), offset: 0 };
            for cur in inner.cursors.values_mut() {
                if *cur < next {
                    *cur = next;
                }
            }
            inner.forget_delivered();
            stats.dropped_segments.fetch_add(1, Ordering::Relaxed);
            stats.dropped_records.fetch_add(lost, Ordering::Relaxed);
            warn!(segment = id, bytes = size, records_lost = lost, total_dropped = stats.dropped_records.load(Ordering::Relaxed), "spool full: oldest segment dropped");
        }
    }

    /// Records that `dest` has everything before `pos`, and deletes segments
    /// every destination is done with.
    pub fn ack(&self, dest: &str, pos: Pos) -> Result<()> {
        let mut g = self.inner.lock().unwrap();
        let inner = &mut *g;
        let cur = inner.cursors.entry(dest.to_string()).or_default();
        if pos <= *cur {
            return Ok(());
        }
        *cur = pos;
        inner.write_cursor(dest, pos)?;
        inner.collect()
    }

    /// Where the next batch goes: a destination added now starts here.
    pub fn end(&self) -> Pos {
        let g = self.inner.lock().unwrap();
        let (&segment, &offset) = g.segments.iter().next_back().unwrap();
        Pos { segment, offset }
    }

    /// A destination added while the agent runs (a reload): it gets the
    /// batches from `pos` on. Its cursor file is written at once, so that a
    /// restart does not hand it older records (or a stale cursor of a
    /// destination of the same name).
    pub fn add_destination(&self, dest: &str, pos: Pos) -> Result<()> {
        let mut g = self.inner.lock().unwrap();
        g.write_cursor(dest, pos)?;
        g.cursors.insert(dest.to_string(), pos);
        Ok(())
    }

    /// A destination removed by a reload, once it delivered what it had
    /// accepted: its cursor no longer holds segments back.
    pub fn remove_destination(&self, dest: &str) -> Result<()> {
        let mut g = self.inner.lock().unwrap();
        g.cursors.remove(dest);
        let p = g.dir.join(cursor_file_name(dest));
        if let Err(e) = fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e).with_context(|| format!("removing spool cursor {}", p.display()));
            }
        }
        g.collect()
    }

    /// Seconds since the window of the oldest record some destination has
    /// not acknowledged ended; `None` when every destination is up to date.
    pub fn oldest_record_age(&self, now_unix: u64) -> Option<u64> {
        let g = self.inner.lock().unwrap();
        // Usually the front, but a window reported late (left in the kernel
        // by a previous agent) can be older than those spooled before it.
        g.waiting.iter().map(|&(_, t)| t).min().map(|t| now_unix.saturating_sub(t))
    }

    /// A reader from `dest`'s acknowledged position.
    pub fn reader(&self, dest: &str) -> Reader {
        let pos = self.inner.lock().unwrap().cursors.get(dest).copied().unwrap_or_default();
        Reader { spool: self.clone(), pos, file: None, rx: self.tx.subscribe() }
    }
}

impl Inner {
    fn write_cursor(&self, dest: &str, pos: Pos) -> Result<()> {
        let p = self.dir.join(cursor_file_name(dest));
        let tmp = p.with_extension("tmp");
        perm::write_new(&tmp, format!("{} {}\n", pos.segment, pos.offset).as_bytes(), FILE_MODE)
            .and_then(|_| fs::rename(&tmp, &p))
            .with_context(|| format!("writing spool cursor {}", p.display()))
    }

    /// Deletes the segments every destination is done with.
    fn collect(&mut self) -> Result<()> {
        self.forget_delivered();
        if self.cursors.is_empty() {
            return Ok(());
        }
        let min = self.cursors.values().min().copied().unwrap_or_default();
        let active = *self.segments.keys().next_back().unwrap();
        let done: Vec<u64> = self.segments.keys().copied().filter(|&id| id < min.segment && id != active).collect();
        for id in done {
            let _ = fs::remove_file(seg_path(&self.dir, id));
            self.segments.remove(&id);
        }
        // Everything acknowledged and the active segment is big: start afresh.
        let active_size = self.segments[&active];
        if min == (Pos { segment: active, offset: active_size }) && active_size > self.segment_max / 2 {
            let id = active + 1;
            let path = seg_path(&self.dir, id);
            self.active = new_segment(&path).with_context(|| format!("spool segment {}", path.display()))?;
            self.segments.insert(id, 0);
            let _ = fs::remove_file(seg_path(&self.dir, active));
            self.segments.remove(&active);
            for c in self.cursors.values_mut() {
                *c = Pos { segment: id, offset: 0 };
            }
            self.waiting.clear();
        }
        Ok(())
    }

    /// Drops the frames every destination has acknowledged from `waiting`.
    fn forget_delivered(&mut self) {
        let min = self.cursors.values().min().copied().unwrap_or_default();
        while self.waiting.front().is_some_and(|&(end, _)| end <= min) {
            self.waiting.pop_front();
        }
    }
}

/// The `end` of a spooled batch's first record, read from the front of its
/// encoding (header, count, then start and end of the first record) without
/// decoding the rest.
fn first_record_end(payload: &[u8]) -> Option<u64> {
    let mut b = payload;
    let h = get_u32(&mut b).ok()? as usize;
    take(&mut b, h).ok()?;
    if get_u32(&mut b).ok()? == 0 {
        return None;
    }
    get_u64(&mut b).ok()?;
    get_u64(&mut b).ok()
}

fn count_records(path: &Path, from: u64, limit: u64) -> Result<u64> {
    let mut f = File::open(path)?;
    let mut off = from;
    let mut n = 0;
    while let Some((payload, next)) = read_frame(&mut f, off, limit)? {
        n += Batch::decode(&payload).map(|b| b.records.len() as u64).unwrap_or(0);
        off = next;
    }
    Ok(n)
}

/// Reads batches in order, from a destination's acknowledged position on.
pub struct Reader {
    spool: Spool,
    pos: Pos,
    file: Option<(u64, File)>,
    rx: watch::Receiver<u64>,
}

impl Reader {
    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// The next committed batch and the position after it, or `None` when
    /// the reader is at the end.
    pub fn next_batch(&mut self) -> Result<Option<(Batch, Pos)>> {
        loop {
            let (limit, next_seg) = {
                let g = self.spool.inner.lock().unwrap();
                let oldest = *g.segments.keys().next().unwrap();
                if self.pos.segment < oldest {
                    // Dropped while we were behind (counted by the writer).
                    self.pos = Pos { segment: oldest, offset: 0 };
                    self.file = None;
                }
                let limit = g.segments.get(&self.pos.segment).copied();
                let next_seg = g.segments.range(self.pos.segment + 1..).next().map(|(k, _)| *k);
                (limit, next_seg)
            };
            // Our segment is gone (acked by all, or rotated away) or read to
            // its end: on to the next one, if any.
            let limit = match limit {
                Some(l) if self.pos.offset < l => l,
                _ => match next_seg {
                    Some(s) => {
                        self.pos = Pos { segment: s, offset: 0 };
                        self.file = None;
                        continue;
                    }
                    None => return Ok(None),
                },
            };
            if self.file.as_ref().map(|(id, _)| *id) != Some(self.pos.segment) {
                let path = {
                    let g = self.spool.inner.lock().unwrap();
                    seg_path(&g.dir, self.pos.segment)
                };
                match File::open(&path) {
                    Ok(f) => self.file = Some((self.pos.segment, f)),
                    Err(e) => {
                        // Deleted under us (acknowledged by all): look again.
                        let g = self.spool.inner.lock().unwrap();
                        if g.segments.contains_key(&self.pos.segment) {
                            return Err(e).with_context(|| format!("spool segment {} cannot be opened", path.display()));
                        }
                        continue;
                    }
                }
            }
            let (_, f) = self.file.as_mut().unwrap();
            match read_frame(f, self.pos.offset, limit)? {
                Some((payload, next)) => {
                    let b = Batch::decode(&payload)?;
                    self.pos.offset = next;
                    return Ok(Some((b, self.pos)));
                }
                None => bail!("spool segment {} is corrupt at offset {}", self.pos.segment, self.pos.offset),
            }
        }
    }

    /// Waits until something may have been appended since the last call.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowlog-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// 100 records of 200 bytes: about 23 KiB in a segment.
    fn big_batch() -> Batch {
        Batch { header: "h".into(), records: (0..100).map(|i| SpoolRecord { interface_id: "e".into(), start: i, end: i, line: "x".repeat(200) }).collect() }
    }

    /// A new spool in its own directory for `dests`, `bigs` big batches appended.
    fn spool_with(name: &str, max_bytes: u64, dests: &[&str], bigs: usize) -> (PathBuf, Spool) {
        let dir = tmpdir(name);
        let dests: Vec<String> = dests.iter().map(|d| d.to_string()).collect();
        let s = Spool::open(&dir, max_bytes, &dests).unwrap();
        let big = big_batch();
        for _ in 0..bigs {
            s.append(&big).unwrap();
        }
        (dir, s)
    }

    /// Reads every batch waiting for `dest`; the position of the last one.
    fn read_all(s: &Spool, dest: &str) -> Option<Pos> {
        let mut r = s.reader(dest);
        let mut last = None;
        while let Some((_, p)) = r.next_batch().unwrap() {
            last = Some(p);
        }
        last
    }

    fn batch(n: usize, tag: &str) -> Batch {
        Batch {
            header: "a b".into(),
            records: (0..n).map(|i| SpoolRecord { interface_id: "eni-1".into(), start: i as u64, end: i as u64 + 60, line: format!("{tag} {i}") }).collect(),
        }
    }

    #[test]
    fn batches_round_trip_and_survive_reopen_with_cursors() {
        let dir = tmpdir("reopen");
        let dests = vec!["a".to_string(), "b".to_string()];
        let s = Spool::open(&dir, 1 << 30, &dests).unwrap();
        let b1 = batch(3, "x");
        let b2 = batch(2, "y");
        s.append(&b1).unwrap();
        s.append(&b2).unwrap();
        let mut ra = s.reader("a");
        let (g1, p1) = ra.next_batch().unwrap().unwrap();
        assert_eq!(g1, b1);
        s.ack("a", p1).unwrap();
        drop(ra);
        drop(s);
        let s = Spool::open(&dir, 1 << 30, &dests).unwrap();
        let mut ra = s.reader("a");
        assert_eq!(ra.next_batch().unwrap().unwrap().0, b2);
        assert!(ra.next_batch().unwrap().is_none());
        let mut rb = s.reader("b");
        assert_eq!(rb.next_batch().unwrap().unwrap().0, b1);
        assert_eq!(s.pending_records("b").unwrap(), 5);
        fs::remove_dir_all(dir).unwrap();
    }

    /// A destination added while running starts at the end (also after a
    /// reopen); one removed no longer holds segments back.
    #[test]
    fn destinations_added_and_removed_while_running() {
        let dir = tmpdir("reload");
        // 64 KiB segments: two big batches in the first, the third starts the second.
        let s = Spool::open(&dir, 256 << 10, &["a".to_string()]).unwrap();
        for _ in 0..3 {
            s.append(&big_batch()).unwrap();
        }
        assert_eq!(s.end().segment, 2);
        s.add_destination("b", s.end()).unwrap();
        assert_eq!(s.pending_records("b").unwrap(), 0);
        let later = batch(2, "y");
        let end = s.append(&later).unwrap();
        assert_eq!((s.pending_records("a").unwrap(), s.pending_records("b").unwrap()), (302, 2));
        drop(s);
        let s = Spool::open(&dir, 256 << 10, &["a".to_string(), "b".to_string()]).unwrap();
        assert_eq!(s.reader("b").next_batch().unwrap().unwrap().0, later);
        // `b` has everything; `a`, removed, held the first segment.
        s.ack("b", end).unwrap();
        let (before, first) = (s.bytes(), fs::metadata(seg_path(&dir, 1)).unwrap().len());
        s.remove_destination("a").unwrap();
        assert!(!dir.join(cursor_file_name("a")).exists() && !seg_path(&dir, 1).exists());
        assert_eq!(s.bytes(), before - first);
        assert!(s.reader("b").next_batch().unwrap().is_none());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn oldest_waiting_record_age() {
        let d = tmpdir("age");
        let dests = ["a".to_string(), "b".to_string()];
        let sp = Spool::open(&d, 1 << 20, &dests).unwrap();
        assert_eq!(sp.oldest_record_age(1000), None);
        let first = sp.append(&batch(3, "x")).unwrap(); // ends 60, 61, 62
        let mut late = batch(1, "y");
        late.records[0].end = 30; // a late window, older than the first
        let second = sp.append(&late).unwrap();
        sp.append(&Batch { header: "a b".into(), records: vec![] }).unwrap();
        assert_eq!(sp.oldest_record_age(1000), Some(970));
        sp.ack("a", second).unwrap();
        assert_eq!(sp.oldest_record_age(1000), Some(970), "b still waits for both");
        sp.ack("b", first).unwrap();
        assert_eq!(sp.oldest_record_age(1000), Some(970));
        drop(sp);
        // Reopened: read back from the segments and the cursors.
        let sp = Spool::open(&d, 1 << 20, &dests).unwrap();
        assert_eq!(sp.oldest_record_age(1000), Some(970));
        sp.ack("b", second).unwrap();
        assert_eq!(sp.oldest_record_age(1000), None);
        assert_eq!(sp.oldest_record_age(10), None);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tmpdir("torn");
        let dests = vec!["a".to_string()];
        let s = Spool::open(&dir, 1 << 30, &dests).unwrap();
        s.append(&batch(2, "x")).unwrap();
        drop(s);
        let seg = seg_path(&dir, 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        let s = Spool::open(&dir, 1 << 30, &dests).unwrap();
        assert_eq!(s.pending_records("a").unwrap(), 2);
        s.append(&batch(1, "z")).unwrap();
        assert_eq!(s.pending_records("a").unwrap(), 3);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let dir = tmpdir("full");
        let dests = vec!["a".to_string(), "b".to_string()];
        // segment_max is clamped to 64 KiB; bound 256 KiB.
        let s = Spool::open(&dir, 256 << 10, &dests).unwrap();
        let big = big_batch();
        let mut total = 0;
        for _ in 0..40 {
            s.append(&big).unwrap();
            total += 100;
            // `a` keeps up, `b` never acknowledges.
            s.ack("a", read_all(&s, "a").unwrap()).unwrap();
        }
        assert!(s.bytes() <= 256 << 10, "{}", s.bytes());
        let dropped = s.stats.dropped_records.load(Ordering::Relaxed);
        assert!(dropped > 0);
        // Only b lost records; what b can still read plus what was dropped is everything.
        assert_eq!(s.pending_records("b").unwrap() + dropped, total);
        assert_eq!(s.pending_records("a").unwrap(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn acked_segments_are_deleted() {
        let (dir, s) = spool_with("gc", 1 << 20, &["a"], 20);
        assert!(s.bytes() > 300_000);
        s.ack("a", read_all(&s, "a").unwrap()).unwrap();
        assert_eq!(s.bytes(), 0);
        assert_eq!(s.stats.dropped_records.load(Ordering::Relaxed), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn one_agent_per_spool_dir() {
        let dir = tmpdir("lock");
        let s = Spool::open(&dir, 1 << 20, &[]).unwrap();
        let e = Spool::open(&dir, 1 << 20, &[]).err().unwrap();
        assert!(e.to_string().contains("is in use by another flowlog-agent"), "{e}");
        drop(s);
        Spool::open(&dir, 1 << 20, &[]).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    fn modes(dir: &Path) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().to_string_lossy().into_owned(), perm::mode_of(&e.path()).unwrap())).collect();
        v.sort();
        v
    }

    fn chmod(p: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A new spool: directory 0700, segments, cursors and lock 0600.
    #[test]
    fn new_spool_is_private() {
        // Two ~23 KiB batches per 64 KiB segment: segments 1 and 2.
        let (dir, s) = spool_with("modes-new", 256 << 10, &["a"], 4);
        let (_, p) = s.reader("a").next_batch().unwrap().unwrap();
        s.ack("a", p).unwrap();
        assert_eq!(perm::mode_of(&dir).unwrap(), 0o700);
        let c = cursor_file_name("a");
        assert_eq!(modes(&dir), vec![(c, 0o600), ("lock".into(), 0o600), ("seg-00000000000000000001.spool".into(), 0o600), ("seg-00000000000000000002.spool".into(), 0o600)]);
        fs::remove_dir_all(dir).unwrap();
    }

    /// A spool an older version made (0755, files 0644) is tightened when
    /// reopened, its records kept; a file already tighter stays so.
    #[test]
    fn older_spool_is_tightened_never_loosened() {
        let dir = tmpdir("modes-old");
        let dests = vec!["a".to_string()];
        let s = Spool::open(&dir, 1 << 30, &dests).unwrap();
        let p = s.append(&batch(2, "x")).unwrap();
        s.append(&batch(3, "y")).unwrap();
        s.ack("a", p).unwrap();
        drop(s);
        // What the older version left, plus a segment someone made 0400.
        chmod(&dir, 0o755);
        let c = cursor_file_name("a");
        for f in [&c, "lock", "seg-00000000000000000001.spool"] {
            chmod(&dir.join(f), 0o644);
        }
        fs::write(seg_path(&dir, 0), b"").unwrap();
        chmod(&seg_path(&dir, 0), 0o400);
        let s = Spool::open(&dir, 1 << 30, &dests).unwrap();
        assert_eq!(s.pending_records("a").unwrap(), 3);
        assert_eq!(perm::mode_of(&dir).unwrap(), 0o700);
        assert_eq!(
            modes(&dir),
            vec![(c, 0o600), ("lock".into(), 0o600), ("seg-00000000000000000000.spool".into(), 0o400), ("seg-00000000000000000001.spool".into(), 0o600)]
        );
        drop(s);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unwritable_spool_dir_is_a_clear_error() {
        let e = Spool::open(Path::new("/proc/flowlog-spool"), 1 << 20, &[]).err().unwrap();
        assert!(format!("{e:#}").contains("spool directory /proc/flowlog-spool"), "{e:#}");
    }
}
