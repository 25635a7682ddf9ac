//! The harness the pipeline fuzz targets share: a switch compiled from a YAML configuration,
//! fed arbitrary bytes read as a stream of frames, `[port: u8][len: u8][now_delta: u8][len
//! bytes of frame]`, one frame a burst. Each frame must leave the burst empty, and every
//! buffer must come back to the pool at the end.

use switchyard_dataplane::config::Config;
use switchyard_dataplane::pipeline::{process_burst, TxBatches};
use switchyard_dataplane::port::Burst;
use switchyard_dataplane::{Pool, PoolCache, SwitchConfig};

/// What became of one frame: drops counted on the switch's ports, and how many ports it was
/// queued to.
pub struct Outcome {
    pub drops: u64,
    pub queued: u64,
}

pub struct Harness {
    pub sw: SwitchConfig,
    pool: Pool,
    cache: PoolCache,
    tx: TxBatches,
    /// The pipeline's clock (seconds), advanced by each frame's delta.
    pub now: u32,
    /// Frames fed so far.
    pub frames: u64,
}

impl Harness {
    /// A switch of `config` with a pool of 512 buffers named `pool`.
    pub fn new(config: &str, pool: &str) -> Harness {
        let cfg = Config::from_yaml_str(config).expect("fuzz config");
        let sw = SwitchConfig::compile(&cfg, None).expect("compile");
        let pool = Pool::with_hugepages(pool, 512, false).expect("pool");
        let cache = pool.cache();
        let tx = TxBatches::new(sw.port_slots());
        Harness { sw, pool, cache, tx, now: 0, frames: 0 }
    }

    fn drops(&self) -> u64 {
        self.sw.port_ids().filter_map(|p| self.sw.port(p)).map(|p| p.stats.total_drops()).sum()
    }

    /// Feeds `data` frame by frame, on port `data[i] % ports`, the clock advanced by
    /// `data[i + 2] % max_delta`; `each` sees every frame's outcome.
    pub fn run(&mut self, data: &[u8], ports: u8, max_delta: u8, mut each: impl FnMut(&Harness, Outcome)) {
        let mut rest = data;
        while rest.len() >= 3 {
            let port = u16::from(rest[0] % ports);
            let len = usize::from(rest[1]).min(rest.len() - 3);
            self.now += u32::from(rest[2] % max_delta);
            let frame = &rest[3..3 + len];
            rest = &rest[3 + len..];
            let mut burst = Burst::new();
            burst.push(self.cache.alloc_copy(frame).expect("buffer"));
            self.frames += 1;
            let before = self.drops();
            process_burst(&self.sw, port, &mut burst, self.now, &mut self.cache, &mut self.tx, None);
            assert!(burst.is_empty());
            let mut queued = 0u64;
            let cache = &mut self.cache;
            self.tx.drain_with(|_, b| {
                queued += b.len() as u64;
                for x in b.drain(..) {
                    cache.free(x);
                }
            });
            let drops = self.drops() - before;
            each(self, Outcome { drops, queued });
        }
    }

    /// Every frame fed was counted as received on some port, and every buffer is back.
    pub fn finish(self) {
        let rx: u64 = self
            .sw
            .port_ids()
            .map(|p| self.sw.port(p).unwrap().stats.rx_packets())
            .sum();
        assert_eq!(rx, self.frames);
        let Harness { pool, cache, .. } = self;
        drop(cache);
        assert_eq!(pool.in_use(), 0);
    }
}
