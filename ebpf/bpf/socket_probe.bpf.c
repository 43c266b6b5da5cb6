// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/* flowex socket probe: which process owns each TCP/UDP/SCTP socket.
 *
 * sock_send_length and sock_recv_length fire in the context of the process that sends or
 * receives, with the socket at hand. Two forms of each program are built: tp_btf (called
 * directly by the tracepoint, socket fields read with plain loads: the fast path on every
 * send and receive) and classic tracepoints (fields read through bpf_probe_read_kernel),
 * which the loader falls back to on kernels where tp_btf cannot attach. The first time a socket is seen from a process, the
 * probe writes the socket's 5-tuple -> (tgid, cgroup id, process name) into an LRU hash map;
 * every later call on the same socket from the same process is one map lookup and returns.
 * No per-packet events leave the kernel: the agent looks owners up by tuple when it
 * exports a flow, and conntrack, not this probe, counts the bytes.
 *
 * inet_sock_set_state catches TCP connects that carry no data (see on_state_change).
 *
 * Entries are not removed when a socket closes: a connection's final record is exported
 * after the close (TIME_WAIT), and must still find its owner. The LRU map bounds memory,
 * and a later socket with the same tuple overwrites the entry on its first call.
 *
 * The license string must be GPL-compatible for bpf_probe_read_kernel, which CO-RE reads use.
 */
#include "probe_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_SCTP 132
#define COMM_LEN 16
#define TCP_SYN_SENT 2

/* Addresses are 16 bytes: IPv4 as ::ffff:a.b.c.d, and any unspecified address (0.0.0.0
 * or ::) as sixteen zero bytes, so dual-stack sockets and wildcard binds have one form.
 * Ports in host byte order. A connected socket's tuple is unique on the node and its netns
 * is 0; an unconnected socket (a UDP server) is known by its local end only, which several
 * network namespaces can share (every DNS pod binds 0.0.0.0:53), so its key carries the
 * netns inode. 44 bytes, no holes. */
struct socket_key {
	__u8 local[16];
	__u8 remote[16];
	__u16 local_port;
	__u16 remote_port;
	__u8 protocol;
	__u8 pad[3];
	__u32 netns;
};

/* 40 bytes. */
struct socket_owner {
	__u32 tgid;
	__u32 netns; /* inode of the socket's network namespace */
	__u64 cgroup_id;
	__u64 recorded_ns; /* CLOCK_MONOTONIC when this owner was written */
	char comm[COMM_LEN]; /* the thread group leader's name */
};

/* Layout of the sock_send_length / sock_recv_length context, from
 * /sys/kernel/tracing/events/sock/sock_send_length/format. */
struct sock_length_args {
	__u64 common;
	const void *sk;
	__u16 family;
	__u16 protocol;
	__s32 ret;
	__s32 flags;
};

/* Layout of the inet_sock_set_state context, from its tracefs format file. */
struct sock_state_args {
	__u64 common;
	const void *skaddr;
	int oldstate;
	int newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

struct task_struct {
	struct task_struct *group_leader;
	char comm[COMM_LEN];
} __attribute__((preserve_access_index));

enum probe_stat {
	STAT_CALLS = 0,      /* send/recv calls on inet TCP/UDP/SCTP sockets */
	STAT_RECORDED = 1,   /* owners written (new socket, or a new process on it) */
	STAT_MAP_ERRORS = 2, /* map updates that failed */
	STAT_EVICTED = 3,    /* owners of live sockets the LRU map had evicted (recorded again) */
	STAT_COUNT = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* the loader sets the configured size */
	__type(key, struct socket_key);
	__type(value, struct socket_owner);
} SOCKET_OWNERS SEC(".maps");

/* Per socket, in the socket itself (freed with it): the process last recorded as its
 * owner. The tp_btf fast path: a send or receive by that process returns after one
 * pointer lookup, with no key built and no hashing. Every RECHECK_EVERY calls the full
 * path runs again, so an owner the LRU map evicted is recorded again. */
struct socket_seen {
	__u32 tgid;
	__u32 calls;
};

#define RECHECK_EVERY 4096

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct socket_seen);
} SOCKET_SEEN SEC(".maps");

/* Owners of TCP sockets between connect() and the end of SYN_SENT, by socket address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct socket_owner);
} CONNECTING SEC(".maps");

/* Local address -> network namespace inode, learned from connected sockets (a pod's IP
 * from its connections), so that user space can tell which namespace's unconnected socket
 * a flow reached. Loopback addresses exist in every namespace and are not recorded. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u8[16]);
	__type(value, __u32);
} ADDRESS_NETNS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} PROBE_STATS SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *value = bpf_map_lookup_elem(&PROBE_STATS, &stat);

	if (value)
		*value += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline void put_ipv4(__u8 *out, __be32 address)
{
	if (address == 0)
		return; /* unspecified: stays all zero */
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(&out[12], &address, 4);
}

static __always_inline int is_zero16(const __u8 *a)
{
	__u64 lo, hi;

	__builtin_memcpy(&lo, a, 8);
	__builtin_memcpy(&hi, a + 8, 8);
	return (lo | hi) == 0;
}

static __always_inline void clear_mapped_any(__u8 *a)
{
	/* ::ffff:0.0.0.0 is a dual-stack socket's unspecified IPv4 address */
	if (a[10] == 0xff && a[11] == 0xff && a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 0)
		__builtin_memset(a, 0, 16);
}

static __always_inline int wanted(__u16 family, __u16 protocol)
{
	return (family == AF_INET || family == AF_INET6) &&
	       (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_SCTP);
}

static __always_inline int is_loopback(const __u8 *a)
{
	__u64 lo;
	__u32 mid;

	__builtin_memcpy(&lo, a, 8);
	__builtin_memcpy(&mid, a + 8, 4);
	if (lo != 0)
		return 0;
	if (mid == 0 && a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 1)
		return 1; /* ::1 */
	return a[8] == 0 && a[9] == 0 && a[10] == 0xff && a[11] == 0xff && a[12] == 127;
}

/* The calling process as an owner. */
static __always_inline void current_owner(struct socket_owner *owner, __u32 netns)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	owner->tgid = bpf_get_current_pid_tgid() >> 32;
	owner->netns = netns;
	owner->cgroup_id = bpf_get_current_cgroup_id();
	owner->recorded_ns = bpf_ktime_get_ns();
	BPF_CORE_READ_STR_INTO(&owner->comm, task, group_leader, comm);
}

/* Writes an owner, and for a connected socket on a real address, which network namespace
 * that address belongs to. */
static __always_inline void store_owner(struct socket_key *key, struct socket_owner *owner)
{
	if (bpf_map_update_elem(&SOCKET_OWNERS, key, owner, BPF_ANY) == 0)
		count(STAT_RECORDED);
	else
		count(STAT_MAP_ERRORS);
	if (key->remote_port != 0 && !is_zero16(key->local) && !is_loopback(key->local))
		bpf_map_update_elem(&ADDRESS_NETNS, key->local, &owner->netns, BPF_ANY);
}

static __always_inline int unbound(const struct socket_key *key)
{
	return key->local_port == 0 && is_zero16(key->local);
}

/* Shared tail of send/recv: skip a socket already known for this process, else record
 * the caller as its owner. */
static __always_inline int record_key(struct socket_key *key, __u32 netns)
{
	struct socket_owner owner = {};
	struct socket_owner *known;

	if (unbound(key))
		return 0; /* nothing a flow could be matched with */
	known = bpf_map_lookup_elem(&SOCKET_OWNERS, key);
	if (known && known->tgid == (__u32)(bpf_get_current_pid_tgid() >> 32))
		return 0;
	current_owner(&owner, netns);
	store_owner(key, &owner);
	return 0;
}

/* The socket's key, read with direct (CO-RE relocated) loads from a tp_btf pointer;
 * returns the socket's network namespace inode. */
static __always_inline __u32 fill_key_btf(const struct sock *sk, __u16 family, __u16 protocol,
					  struct socket_key *key)
{
	__u32 netns;

	key->protocol = (__u8)protocol;
	key->local_port = sk->__sk_common.skc_num;
	key->remote_port = bpf_ntohs(sk->__sk_common.skc_dport);
	if (family == AF_INET) {
		put_ipv4(key->local, sk->__sk_common.skc_rcv_saddr);
		put_ipv4(key->remote, sk->__sk_common.skc_daddr);
	} else {
		__builtin_memcpy(key->local, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(key->remote, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
		clear_mapped_any(key->local);
		clear_mapped_any(key->remote);
	}
	netns = sk->__sk_common.skc_net.net->ns.inum;
	if (key->remote_port == 0)
		key->netns = netns;
	return netns;
}

/* The same through bpf_probe_read_kernel, for classic tracepoints' untyped pointers. */
static __always_inline __u32 fill_key_core(const struct sock *sk, __u16 family, __u16 protocol,
					   struct socket_key *key)
{
	__u32 netns;

	key->protocol = (__u8)protocol;
	key->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	key->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		put_ipv4(key->local, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		put_ipv4(key->remote, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	} else {
		BPF_CORE_READ_INTO(&key->local, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&key->remote, sk, __sk_common.skc_v6_daddr);
		clear_mapped_any(key->local);
		clear_mapped_any(key->remote);
	}
	netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (key->remote_port == 0)
		key->netns = netns;
	return netns;
}

/* A TCP connect: SYN_SENT is set in the connecting process's context, before the source
 * port is chosen, so the owner is parked under the socket's address. When the socket
 * leaves SYN_SENT (established, refused, timed out: usually in softirq context, any
 * process) its tuple is complete and the parked owner is recorded, unless a send or
 * receive already did. The local port is read from inet_sport by the callers: on the way
 * to CLOSE the port is released (skc_num = 0) before the tracepoint fires. Connections that never carry data (probes, refused or denied
 * attempts) get their owner this way. */
static __always_inline int on_state_change(const struct sock *sk, int oldstate, int newstate,
					   struct socket_key *key, __u32 netns)
{
	__u64 address = (__u64)sk;
	struct socket_owner *parked;
	struct socket_owner owner;

	if (newstate == TCP_SYN_SENT) {
		__builtin_memset(&owner, 0, sizeof(owner));
		current_owner(&owner, 0);
		bpf_map_update_elem(&CONNECTING, &address, &owner, BPF_ANY);
		return 0;
	}
	if (oldstate != TCP_SYN_SENT)
		return 0;
	parked = bpf_map_lookup_elem(&CONNECTING, &address);
	if (!parked)
		return 0;
	owner = *parked;
	bpf_map_delete_elem(&CONNECTING, &address);
	if (unbound(key) || bpf_map_lookup_elem(&SOCKET_OWNERS, key))
		return 0;
	owner.netns = netns;
	store_owner(key, &owner);
	return 0;
}

static __always_inline int on_send_recv_btf(struct sock *sk)
{
	struct socket_key key = {};
	__u16 family = sk->__sk_common.skc_family;
	__u16 protocol = sk->sk_protocol;
	struct socket_seen *seen;
	int rechecking;
	__u32 tgid, netns;

	if (!wanted(family, protocol))
		return 0;
	count(STAT_CALLS);
	tgid = bpf_get_current_pid_tgid() >> 32;
	seen = bpf_sk_storage_get(&SOCKET_SEEN, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	rechecking = seen && seen->tgid == tgid;
	if (rechecking && (++seen->calls % RECHECK_EVERY) != 0)
		return 0;
	netns = fill_key_btf(sk, family, protocol, &key);
	/* The LRU map does not say what it evicts; this finds the evictions that matter. */
	if (rechecking && !bpf_map_lookup_elem(&SOCKET_OWNERS, &key))
		count(STAT_EVICTED);
	record_key(&key, netns);
	if (seen && !unbound(&key)) {
		seen->tgid = tgid;
		seen->calls = 0;
	}
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(send_btf, struct sock *sk, int ret, int flags)
{
	return on_send_recv_btf(sk);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(recv_btf, struct sock *sk, int ret, int flags)
{
	return on_send_recv_btf(sk);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(state_btf, const struct sock *sk, int oldstate, int newstate)
{
	struct socket_key key = {};
	__u16 family = sk->__sk_common.skc_family;
	__u16 protocol = sk->sk_protocol;
	__u32 netns;

	if (protocol != IPPROTO_TCP || !wanted(family, protocol))
		return 0;
	if (newstate != TCP_SYN_SENT && oldstate != TCP_SYN_SENT)
		return 0;
	netns = fill_key_btf(sk, family, protocol, &key);
	/* A probe read: the verifier types `sk` as struct sock, and inet_sport lies beyond it. */
	key.local_port = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
	return on_state_change(sk, oldstate, newstate, &key, netns);
}

/* Classic tracepoints: family and protocol come with the event. */
static __always_inline int record_owner(struct sock_length_args *args)
{
	struct socket_key key = {};

	if (!wanted(args->family, args->protocol))
		return 0;
	count(STAT_CALLS);
	return record_key(&key, fill_key_core(args->sk, args->family, args->protocol, &key));
}

SEC("tracepoint/sock/sock_send_length")
int sock_send_length(struct sock_length_args *args)
{
	return record_owner(args);
}

SEC("tracepoint/sock/sock_recv_length")
int sock_recv_length(struct sock_length_args *args)
{
	return record_owner(args);
}

SEC("tracepoint/sock/inet_sock_set_state")
int inet_sock_set_state(struct sock_state_args *args)
{
	struct socket_key key = {};
	__u32 netns;

	if (args->protocol != IPPROTO_TCP || !wanted(args->family, args->protocol))
		return 0;
	if (args->newstate != TCP_SYN_SENT && args->oldstate != TCP_SYN_SENT)
		return 0;
	netns = fill_key_core(args->skaddr, args->family, args->protocol, &key);
	key.local_port = args->sport; /* from inet_sport, in host order */
	return on_state_change(args->skaddr, args->oldstate, args->newstate, &key, netns);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
