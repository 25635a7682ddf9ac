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
 * A packet mbuf pool whose data buffers are pinned external buffers
 * (rte_pktmbuf_pool_create_extbuf) of elt_size bytes each, carved in order
 * from one IOVA-contiguous memzone of n * elt_size bytes. DPDK-managed memory
 * is already DMA-mapped (VFIO) and its IOVA is known, so the same pool serves
 * vdevs under --no-huge and real devices. On success *base is the region and
 * *mz its memzone (free with sy_extbuf_pool_free); on failure NULL with
 * rte_errno set and nothing left allocated.
 */
struct rte_mempool *sy_extbuf_pool_create(const char *name, unsigned int n,
                                          unsigned int cache, uint16_t elt_size,
                                          int socket, void **base,
                                          const void **mz_out)
{
	char zname[RTE_MEMZONE_NAMESIZE];
	size_t len = (size_t)n * elt_size;
	const struct rte_memzone *mz;
	struct rte_pktmbuf_extmem ext;
	struct rte_mempool *mp;
	int err;

	if (snprintf(zname, sizeof(zname), "%s_x", name) >= (int)sizeof(zname)) {
		rte_errno = ENAMETOOLONG;
		return NULL;
	}
	mz = rte_memzone_reserve_aligned(zname, len, socket,
	                                 RTE_MEMZONE_IOVA_CONTIG, 4096);
	if (mz == NULL)
		return NULL;
	ext.buf_ptr = mz->addr;
	ext.buf_iova = mz->iova;
	ext.buf_len = len;
	ext.elt_size = elt_size;
	mp = rte_pktmbuf_pool_create_extbuf(name, n, cache, 0, elt_size, socket,
	                                    &ext, 1);
	if (mp == NULL) {
		err = rte_errno;
		rte_memzone_free(mz);
		rte_errno = err;
		return NULL;
	}
	*base = mz->addr;
	*mz_out = mz;
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
