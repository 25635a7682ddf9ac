//! The pcap port: receives from a capture file (once, or forever from memory like DPDK's
//! net_pcap `infinite_rx`) and writes what it sends to a capture file, or to nowhere (counted
//! as sent, as net_pcap does without a TX file).
//!
//! Only classic pcap with the Ethernet link type is accepted; anything else is an error that
//! names the file (and the frame number for a damaged record).

use super::{Burst, DropTally, PortBackend, PortError, RxClaims, RxCtx, RxQueue, TxQueue};
use crate::buffer::{PoolCache, DATA_ROOM};
use crate::switch::DropReason;
use pcap_file::pcap::PcapReader;
use pcap_file::DataLink;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One record of a capture file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapFrame {
    /// Nanoseconds since the epoch.
    pub ts_ns: u64,
    /// The frame's length on the wire (may exceed `data.len()` for a cut capture).
    pub orig_len: u32,
    pub data: Vec<u8>,
}

/// Reads every record of a classic pcap file with the Ethernet link type.
pub fn read_pcap(path: &Path) -> Result<Vec<PcapFrame>, PortError> {
    let file = path.display().to_string();
    let perr = |msg: String| PortError::Pcap { file: file.clone(), msg };
    let f = File::open(path).map_err(|e| perr(e.to_string()))?;
    let mut r =
        PcapReader::new(std::io::BufReader::new(f)).map_err(|e| perr(format!("not a pcap file: {e}")))?;
    if r.header().datalink != DataLink::ETHERNET {
        return Err(perr(format!("link type {:?}, not Ethernet", r.header().datalink)));
    }
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.map_err(|e| PortError::PcapFrame {
            file: file.clone(),
            frame: out.len() + 1,
            msg: format!("damaged or truncated record: {e}"),
        })?;
        out.push(PcapFrame {
            ts_ns: u64::try_from(p.timestamp.as_nanos()).unwrap_or(u64::MAX),
            orig_len: p.orig_len,
            data: p.data.into_owned(),
        });
    }
    Ok(out)
}

/// Writes frames to a classic pcap file (little-endian, microsecond timestamps, Ethernet).
pub struct PcapFileWriter {
    w: BufWriter<File>,
    file: String,
}

impl PcapFileWriter {
    pub fn create(path: &Path) -> Result<PcapFileWriter, PortError> {
        use std::io::Write;
        let file = path.display().to_string();
        let perr = |e: std::io::Error| PortError::Pcap { file: file.clone(), msg: e.to_string() };
        let f = File::create(path).map_err(perr)?;
        let mut w = BufWriter::new(f);
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&65535u32.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
        w.write_all(&h).map_err(perr)?;
        Ok(PcapFileWriter { w, file })
    }

    pub fn write(&mut self, ts_ns: u64, data: &[u8]) -> Result<(), PortError> {
        use std::io::Write;
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&(((ts_ns % 1_000_000_000) / 1000) as u32).to_le_bytes());
        rec[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        rec[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
        self.w
            .write_all(&rec)
            .and_then(|_| self.w.write_all(data))
            .map_err(|e| PortError::Pcap { file: self.file.clone(), msg: e.to_string() })
    }

    pub fn flush(&mut self) -> Result<(), PortError> {
        use std::io::Write;
        self.w.flush().map_err(|e| PortError::Pcap { file: self.file.clone(), msg: e.to_string() })
    }
}

/// Frames laid out back to back, for a fast replay loop.
struct FrameStore {
    bytes: Vec<u8>,
    /// (offset, captured length, original length)
    index: Vec<(usize, usize, u32)>,
}

/// Where transmitted frames get their timestamps.
#[derive(Clone, Debug)]
pub enum TxClock {
    Wall,
    /// A shared clock in nanoseconds (the replay harness sets it to the input frame's time).
    Shared(Arc<AtomicU64>),
}

impl TxClock {
    fn now_ns(&self) -> u64 {
        match self {
            TxClock::Wall => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            TxClock::Shared(c) => c.load(Ordering::Relaxed),
        }
    }
}

/// A pcap-backed port.
pub struct PcapPort {
    name: String,
    rx: Option<Arc<FrameStore>>,
    infinite: bool,
    rx_claims: Arc<RxClaims>,
    writer: Option<Arc<Mutex<PcapFileWriter>>>,
    clock: TxClock,
}

impl PcapPort {
    /// `rx`: the capture to receive from (`infinite` replays it forever); `tx`: the capture
    /// to write (none: transmitted frames are counted and discarded).
    pub fn open(
        name: &str,
        rx: Option<&Path>,
        tx: Option<&Path>,
        infinite: bool,
        clock: TxClock,
    ) -> Result<PcapPort, PortError> {
        let rx = match rx {
            Some(p) => {
                let frames = read_pcap(p)?;
                if infinite && frames.is_empty() {
                    return Err(PortError::Pcap {
                        file: p.display().to_string(),
                        msg: "an infinite replay needs at least one frame".into(),
                    });
                }
                let mut bytes = Vec::new();
                let mut index = Vec::with_capacity(frames.len());
                for f in frames {
                    index.push((bytes.len(), f.data.len(), f.orig_len));
                    bytes.extend_from_slice(&f.data);
                }
                Some(Arc::new(FrameStore { bytes, index }))
            }
            None => None,
        };
        let writer = match tx {
            Some(p) => Some(Arc::new(Mutex::new(PcapFileWriter::create(p)?))),
            None => None,
        };
        Ok(PcapPort {
            name: name.to_string(),
            rx,
            infinite,
            rx_claims: Arc::new(RxClaims::new(name, 1)),
            writer,
            clock,
        })
    }

    /// Frames in the RX capture.
    pub fn rx_frames(&self) -> usize {
        self.rx.as_ref().map_or(0, |s| s.index.len())
    }
}

struct PcapRx {
    store: Option<Arc<FrameStore>>,
    next: usize,
    infinite: bool,
    claims: Arc<RxClaims>,
    /// Never signalled: once a finite capture is exhausted, nothing more will arrive, and an
    /// idle worker may sleep on this for as long as it likes.
    quiet: Option<nix::sys::eventfd::EventFd>,
}

impl Drop for PcapRx {
    fn drop(&mut self) {
        self.claims.release(0);
    }
}

impl RxQueue for PcapRx {
    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.quiet.as_ref().map(|q| q.as_fd())
    }

    fn arm_wakeup(&mut self) -> bool {
        match &self.store {
            None => true,
            Some(s) => !self.infinite && self.next >= s.index.len(),
        }
    }

    fn rx_burst(&mut self, rx: RxCtx<'_>, out: &mut Burst, max: usize) -> usize {
        let RxCtx { cache, drops } = rx;
        let Some(store) = &self.store else { return 0 };
        let n_frames = store.index.len();
        let want = max.min(out.remaining_capacity());
        // The frames of the next burst follow these in memory: start fetching them now, so that
        // a capture far larger than the caches streams in while this burst is switched.
        let ahead = (self.next + want).min(n_frames);
        let ahead_end = (ahead + want).min(n_frames);
        if ahead < ahead_end {
            let (from, _, _) = store.index[ahead];
            let (last, len, _) = store.index[ahead_end - 1];
            crate::cpu::prefetch(&store.bytes[from..last + len]);
        }
        let mut got = 0;
        // Bounded so that a capture of nothing but bad frames cannot spin here forever.
        let mut budget = want * 2;
        while got < want && budget > 0 {
            budget -= 1;
            if self.next >= n_frames {
                if !self.infinite || n_frames == 0 {
                    break;
                }
                self.next = 0;
            }
            let (off, len, orig) = store.index[self.next];
            self.next += 1;
            if (len as u64) < u64::from(orig) {
                drops.add(DropReason::TruncatedCapture, 1);
                continue;
            }
            if len > DATA_ROOM {
                drops.add(DropReason::Oversize, 1);
                continue;
            }
            let Some(mut b) = cache.alloc() else {
                drops.add(DropReason::NoBuffer, 1);
                break;
            };
            // Cannot fail: len <= DATA_ROOM, the tail room of a fresh buffer.
            let _ = b.extend_from_slice(&store.bytes[off..off + len]);
            out.push(b);
            got += 1;
        }
        got
    }
}

struct PcapTx {
    writer: Option<Arc<Mutex<PcapFileWriter>>>,
    clock: TxClock,
    failed: bool,
}

impl TxQueue for PcapTx {
    fn tx_burst(&mut self, pkts: &mut Burst, cache: &mut PoolCache, drops: &mut DropTally) -> usize {
        let n = pkts.len();
        let Some(w) = &self.writer else {
            for b in pkts.drain(..) {
                cache.free(b);
            }
            return n;
        };
        let ts = self.clock.now_ns();
        let mut sent = 0;
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        for b in pkts.drain(..) {
            match w.write(ts, b.data()) {
                Ok(()) => sent += 1,
                Err(e) => {
                    if !self.failed {
                        tracing::error!(error = %e, "pcap write failed; port counts its frames as port_down");
                        self.failed = true;
                    }
                    drops.add(DropReason::PortDown, 1);
                }
            }
            cache.free(b);
        }
        sent
    }

    fn flush(&mut self) -> Result<(), PortError> {
        match &self.writer {
            Some(w) => w.lock().unwrap_or_else(|e| e.into_inner()).flush(),
            None => Ok(()),
        }
    }
}

impl PortBackend for PcapPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn open_rx(&self, q: u16) -> Result<Box<dyn RxQueue>, PortError> {
        self.rx_claims.claim(q)?;
        Ok(Box::new(PcapRx {
            store: self.rx.clone(),
            next: 0,
            infinite: self.infinite,
            claims: self.rx_claims.clone(),
            quiet: nix::sys::eventfd::EventFd::from_flags(
                nix::sys::eventfd::EfdFlags::EFD_NONBLOCK | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
            )
            .ok(),
        }))
    }

    fn open_tx(&self, _q: u16) -> Result<Box<dyn TxQueue>, PortError> {
        Ok(Box::new(PcapTx { writer: self.writer.clone(), clock: self.clock.clone(), failed: false }))
    }
}

/// A path relative to a base directory, unless already absolute.
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}
