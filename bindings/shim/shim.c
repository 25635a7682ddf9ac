/*
 * switchyard DPDK shim: out-of-line wrappers for DPDK's static-inline
 * functions and macros, which bindgen cannot bind. Each wrapper is a plain
 * forwarding call; the Rust side declares them in src/sys.rs (`shim` module).
 * Keep this list in sync with bindings/src/sys.rs.
 */
/*
 * rte_pktmbuf_pool_create_extbuf is still marked experimental in 22.11; build.rs pins DPDK
 * 22.11, so its ABI cannot change under us.
 */
#define ALLOW_EXPERIMENTAL_API 1
#include <rte_config.h>
#include <rte_build_config.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ethdev.h>
#include <rte_memzone.h>
#include <stdio.h>
#include <stdlib.h>

/* The directory EAL loads driver plugins from when linked dynamically. */
const char *sy_pmd_path(void) { return RTE_EAL_PMD_PATH; }

int sy_rte_errno(void) { return rte_errno; }

unsigned int sy_rte_lcore_id(void) { return rte_lcore_id(); }

uint16_t sy_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                             struct rte_mbuf **rx_pkts, uint16_t nb_pkts)
{
	return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t sy_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                             struct rte_mbuf **tx_pkts, uint16_t nb_pkts)
{
	return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *sy_rte_pktmbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

int sy_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs,
                              unsigned int count)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void sy_rte_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

void *sy_rte_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }

uint16_t sy_rte_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }

uint32_t sy_rte_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }

uint16_t sy_rte_pktmbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }

uint16_t sy_rte_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }

char *sy_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }

char *sy_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_prepend(m, len); }

char *sy_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_adj(m, len); }

int sy_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }

void sy_rte_pktmbuf_reset(struct rte_mbuf *m) { rte_pktmbuf_reset(m); }

int sy_rte_pktmbuf_is_contiguous(const struct rte_mbuf *m) { return rte_pktmbuf_is_contiguous(m); }

uint16_t sy_rte_mbuf_refcnt_read(const struct rte_mbuf *m) { return rte_mbuf_refcnt_read(m); }

uint16_t sy_rte_pktmbuf_data_room_size(struct rte_mempool *mp) { return rte_pktmbuf_data_room_size(mp); }

/*
 * IOVA of the byte at va (RTE_BAD_IOVA when unknown): rte_mem_virt2iova, which
 * under IOVA as PA reads the memseg that holds va, so the answer is per page.
 */
uint64_t sy_rte_mem_virt2iova(const void *va) { return rte_mem_virt2iova(va); }

/* Whether EAL runs with IOVA as physical addresses. */
int sy_rte_eal_iova_is_pa(void) { return rte_eal_iova_mode() == RTE_IOVA_PA; }

/*
 * The pieces of [addr, addr + len) that are IOVA-contiguous, cut at slot
 * boundaries: ext[k] covers whole slots of elt bytes (slot i = addr + i * elt)
 * that lie inside one IOVA-contiguous run of pages. A slot that straddles two
 * runs (its pages are not physically adjacent) is in no piece: no mbuf gets it,
 * since DMA into it would cross into an unrelated page. Returns the number of
 * pieces written (at most max), or -1 when more were needed; *usable is the
 * number of slots the pieces hold. Memory whose IOVA is unknown (RTE_BAD_IOVA:
 * --no-huge with IOVA as PA) is one piece with RTE_BAD_IOVA, as DPDK does for
 * such memory: only devices that never DMA can use it.
 */
static int sy_iova_pieces(char *addr, size_t len, size_t pg, unsigned int elt,
                          struct rte_pktmbuf_extmem *ext, int max,
                          size_t *usable)
{
	rte_iova_t run_iova = rte_mem_virt2iova(addr);
	size_t run = 0, off, nslots = len / elt;
	int k = 0;

	*usable = 0;
	if (run_iova == RTE_BAD_IOVA) {
		ext[0].buf_ptr = addr;
		ext[0].buf_iova = RTE_BAD_IOVA;
		ext[0].buf_len = nslots * elt;
		ext[0].elt_size = elt;
		*usable = nslots;
		return 1;
	}
	/* off walks the page boundaries inside the region, then its end. */
	off = RTE_ALIGN_CEIL((uintptr_t)addr + 1, pg) - (uintptr_t)addr;
	for (;;) {
		int end = off >= len;
		rte_iova_t iova = end ? RTE_BAD_IOVA : rte_mem_virt2iova(addr + off);

		if (end || iova != run_iova + (off - run)) {
			/* The run [run, min(off, len)) ends: its whole slots. */
			size_t first = (run + elt - 1) / elt;
			size_t last = (end ? len : off) / elt;

			if (last > first) {
				if (k == max)
					return -1;
				ext[k].buf_ptr = addr + first * elt;
				ext[k].buf_iova = run_iova == RTE_BAD_IOVA ?
					RTE_BAD_IOVA : run_iova + (first * elt - run);
				ext[k].buf_len = (last - first) * elt;
				ext[k].elt_size = elt;
				*usable += last - first;
				k++;
			}
			if (end)
				return k;
			run = off;
			run_iova = iova;
		}
		off += pg;
	}
}

/*
 * A packet mbuf pool whose data buffers are pinned external buffers
 * (rte_pktmbuf_pool_create_extbuf) of elt_size bytes each, slot i of one
 * memzone at base + i * elt_size. The memzone is contiguous in virtual
 * addresses only: a node that has run for a while may have no two physically
 * adjacent hugepages, and with IOVA as PA an IOVA-contiguous zone would need
 * them. So the zone is registered with DPDK as its IOVA-contiguous pieces
 * (sy_iova_pieces), each with its own IOVA; a slot that straddles two pieces
 * gets no mbuf, and the zone is made larger until n slots are usable. DPDK
 * memory is DMA-mapped (VFIO) and its IOVA known, so the same pool serves
 * vdevs under --no-huge and real devices. On success *base is the region,
 * *slots its size in slots (n or more: the others have no mbuf), *pieces the
 * number of pieces registered, and *mz its memzone (free with
 * sy_extbuf_pool_free); on failure NULL with rte_errno set and nothing left
 * allocated.
 */
struct rte_mempool *sy_extbuf_pool_create(const char *name, unsigned int n,
                                          unsigned int cache, uint16_t elt_size,
                                          int socket, void **base,
                                          const void **mz_out,
                                          unsigned int *slots,
                                          unsigned int *pieces)
{
	char zname[RTE_MEMZONE_NAMESIZE];
	size_t want = n, usable = 0;
	const struct rte_memzone *mz = NULL;
	struct rte_pktmbuf_extmem *ext = NULL;
	struct rte_mempool *mp;
	int attempt, k = -1, err;

	if (snprintf(zname, sizeof(zname), "%s_x", name) >= (int)sizeof(zname)) {
		rte_errno = ENAMETOOLONG;
		return NULL;
	}
	/*
	 * Each try reserves the slots still missing on top of the last zone's
	 * size, plus one per piece for the straddlers; page boundaries are
	 * few (one per page), so two tries are the most it takes in practice.
	 */
	for (attempt = 0; attempt < 8; attempt++) {
		size_t len = want * elt_size, pg;
		int max;

		mz = rte_memzone_reserve_aligned(zname, len, socket, 0,
		                                 RTE_CACHE_LINE_SIZE);
		if (mz == NULL)
			return NULL;
		pg = mz->hugepage_sz;
		max = (int)(len / pg + 2);
		free(ext);
		ext = calloc((size_t)max, sizeof(*ext));
		if (ext == NULL) {
			rte_memzone_free(mz);
			rte_errno = ENOMEM;
			return NULL;
		}
		k = sy_iova_pieces(mz->addr, len, pg, elt_size, ext, max, &usable);
		if (k > 0 && usable >= n)
			break;
		rte_memzone_free(mz);
		mz = NULL;
		want += (usable < n ? n - usable : 0) + (size_t)(k > 0 ? k : max);
	}
	if (mz == NULL) {
		free(ext);
		rte_errno = ENOMEM;
		return NULL;
	}
	mp = rte_pktmbuf_pool_create_extbuf(name, n, cache, 0, elt_size, socket,
	                                    ext, (unsigned int)k);
	free(ext);
	if (mp == NULL) {
		err = rte_errno;
		rte_memzone_free(mz);
		rte_errno = err;
		return NULL;
	}
	*base = mz->addr;
	*mz_out = mz;
	*slots = (unsigned int)(want);
	*pieces = (unsigned int)k;
	return mp;
}

void sy_extbuf_pool_free(struct rte_mempool *mp, const void *mz)
{
	rte_mempool_free(mp);
	rte_memzone_free((const struct rte_memzone *)mz);
}

struct sy_slot_ctx {
	uintptr_t base;
	unsigned int elt_size;
	unsigned int n;
	struct rte_mbuf **table;
	unsigned int filled;
	int bad;
};

static void sy_slot_cb(struct rte_mempool *mp, void *opaque, void *obj,
                       unsigned int obj_idx)
{
	struct sy_slot_ctx *c = opaque;
	struct rte_mbuf *m = obj;
	uintptr_t off = (uintptr_t)m->buf_addr - c->base;
	unsigned int i = (unsigned int)(off / c->elt_size);

	(void)mp;
	(void)obj_idx;
	if ((uintptr_t)m->buf_addr < c->base || off % c->elt_size != 0 ||
	    i >= c->n || c->table[i] != NULL) {
		c->bad = 1;
		return;
	}
	c->table[i] = m;
	c->filled++;
}

/*
 * Fills table[i] with the mbuf whose buffer is slot i (base + i * elt_size)
 * of an extbuf pool. Returns the number of slots filled, or -1 when an mbuf
 * had a buffer outside the region or two shared one.
 */
int sy_extbuf_pool_slots(struct rte_mempool *mp, void *base,
                         unsigned int elt_size, struct rte_mbuf **table,
                         unsigned int n)
{
	struct sy_slot_ctx c = { (uintptr_t)base, elt_size, n, table, 0, 0 };
	unsigned int i;

	for (i = 0; i < n; i++)
		table[i] = NULL;
	rte_mempool_obj_iter(mp, sy_slot_cb, &c);
	return c.bad ? -1 : (int)c.filled;
}

static void sy_direct_cb(struct rte_mempool *mp, void *opaque, void *obj,
                         unsigned int obj_idx)
{
	struct rte_mbuf *m = obj;
	unsigned int *count = opaque;

	(void)mp;
	(void)obj_idx;
	m->ol_flags &= ~RTE_MBUF_F_EXTERNAL;
	(*count)++;
}

/*
 * Clears RTE_MBUF_F_EXTERNAL on every mbuf of a pinned-extbuf pool, so that
 * DPDK frees them as direct mbufs (rte_pktmbuf_prefree_seg skips
 * rte_pktmbuf_detach and the shared-info reference count). Their buf_addr,
 * buf_iova and buf_len stay as rte_pktmbuf_pool_create_extbuf set them.
 * Returns the number of mbufs changed. The caller guarantees that no mbuf of
 * the pool is in use meanwhile, and that none is ever cloned or attached to.
 */
unsigned int sy_extbuf_pool_make_direct(struct rte_mempool *mp)
{
	unsigned int count = 0;

	rte_mempool_obj_iter(mp, sy_direct_cb, &count);
	return count;
}

/*
 * Layout of the structs that the Rust side reads directly, as this C compiler
 * sees them with the installed headers. A test compares it with the committed
 * bindgen output, which catches headers that changed under the bindings.
 */
#include <stddef.h>
size_t sy_layout(unsigned int what)
{
	switch (what) {
	case 0: return sizeof(struct rte_mbuf);
	case 1: return offsetof(struct rte_mbuf, buf_addr);
	case 2: return offsetof(struct rte_mbuf, data_off);
	case 3: return offsetof(struct rte_mbuf, refcnt);
	case 4: return offsetof(struct rte_mbuf, nb_segs);
	case 5: return offsetof(struct rte_mbuf, port);
	case 6: return offsetof(struct rte_mbuf, pkt_len);
	case 7: return offsetof(struct rte_mbuf, data_len);
	case 8: return offsetof(struct rte_mbuf, buf_len);
	case 9: return offsetof(struct rte_mbuf, pool);
	case 10: return offsetof(struct rte_mbuf, next);
	case 11: return sizeof(struct rte_eth_stats);
	case 12: return sizeof(struct rte_eth_link);
	case 13: return sizeof(struct rte_eth_conf);
	case 14: return sizeof(struct rte_eth_dev_info);
	case 15: return sizeof(struct rte_eth_rxconf);
	case 16: return sizeof(struct rte_eth_txconf);
	case 17: return sizeof(struct rte_ether_addr);
	case 18: return offsetof(struct rte_mbuf, ol_flags);
	case 19: return offsetof(struct rte_mbuf, vlan_tci);
	case 20: return (size_t)RTE_MBUF_F_EXTERNAL;
	default: return (size_t)-1;
	}
}
