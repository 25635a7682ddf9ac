/*
 * switchyard DPDK shim: out-of-line wrappers for DPDK's static-inline
 * functions and macros, which bindgen cannot bind. Each wrapper is a plain
 * forwarding call; the Rust side declares them in src/sys.rs (`shim` module).
 * Keep this list in sync with bindings/src/sys.rs.
 */
#include <rte_config.h>
#include <rte_build_config.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ethdev.h>

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
	default: return (size_t)-1;
	}
}
