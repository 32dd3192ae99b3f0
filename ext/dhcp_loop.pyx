# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The DHCP service's receive loop in C: recvmmsg / sendmmsg batches, the GIL released while blocked.

Built as cwboot.services._dhcp_loop_c; cwboot/services/dhcp.py runs it in the
receive thread when it is built (else its pure-Python loop, one recvfrom and
one sendto per datagram, with the same results). It only moves datagrams: each
one goes through ``respond_fast(data)`` (the codec's FastResponder.respond:
compiled templates) and, when that declines, ``respond_full(data, source)``
(the service's full path, which counts what it drops); both return
``(reply, (address, port))`` or None.

Per batch: one recvmmsg (blocks for the first datagram, without the GIL, up to
the socket's SO_RCVTIMEO; takes up to ``batch`` that are already queued), the
answers, one sendmmsg for all replies (a reply the kernel refuses is counted
as ``"send failed: <errno>"`` and the rest still go), then the counters of the
fast-path answers are added to ``stats`` once.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import errno as errno_names

from cwboot.protocol.dhcp import _spec

cdef extern from "<sys/uio.h>":
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<netinet/in.h>":
    struct in_addr:
        unsigned int s_addr
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    unsigned short htons(unsigned short) nogil
    unsigned short ntohs(unsigned short) nogil

cdef extern from "<arpa/inet.h>":
    int inet_pton(int af, const char* src, void* dst) nogil

cdef extern from "<sys/socket.h>":
    ctypedef unsigned int socklen_t
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct timespec:
        pass
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr* CMSG_FIRSTHDR(msghdr* m) nogil
    cmsghdr* CMSG_NXTHDR(msghdr* m, cmsghdr* c) nogil
    unsigned char* CMSG_DATA(cmsghdr* c) nogil
    size_t CMSG_SPACE(size_t n) nogil
    int SOL_SOCKET
    int SO_TIMESTAMPNS
    int SCM_TIMESTAMPNS
    int setsockopt(int fd, int level, int name, const void* value, socklen_t size) nogil
    int AF_INET
    int MSG_WAITFORONE
    int recvmmsg(int fd, mmsghdr* msgs, unsigned int n, int flags, timespec* timeout) nogil
    int sendmmsg(int fd, mmsghdr* msgs, unsigned int n, int flags) nogil

cdef extern from "<time.h>":
    struct timespec_t "timespec":
        long tv_sec
        long tv_nsec
    int CLOCK_MONOTONIC
    int CLOCK_REALTIME
    int clock_gettime(int clk, timespec_t* ts) nogil
    int nanosleep(const timespec_t* req, timespec_t* rem) nogil


cdef inline long long _now_ns() noexcept nogil:
    cdef timespec_t ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline long long _arrival_ns(msghdr* m) noexcept nogil:
    """The kernel's receive timestamp of a datagram (SO_TIMESTAMPNS, CLOCK_REALTIME), 0 if none."""
    cdef cmsghdr* c = CMSG_FIRSTHDR(m)
    cdef timespec_t* ts
    while c != NULL:
        if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
            ts = <timespec_t*>CMSG_DATA(c)
            return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec
        c = CMSG_NXTHDR(m, c)
    return 0


# Pacing: the request arrival rate is measured over windows of at least this much arrival
# time; a gap longer than PACE_IDLE_NS between two requests starts over (the floor applies).
cdef long long PACE_WINDOW_NS = 10000000
cdef long long PACE_IDLE_NS = 100000000
# A backlog older than this (the last datagram of a batch waited longer) is drained at full
# speed: pacing it would only move the overflow into the server's own socket.
cdef long long PACE_MAX_DELAY_NS = 20000000


cdef Py_ssize_t OFF_REPLY_TYPE = _spec.OFF_REPLY_TYPE
cdef int DHCPOFFER = _spec.DHCPOFFER
cdef int DHCPACK = _spec.DHCPACK


cdef str _errname(int e):
    return errno_names.errorcode.get(e, str(e))


cdef str _ntoa(unsigned int s_addr):
    cdef const unsigned char* p = <const unsigned char*>&s_addr
    return f"{p[0]}.{p[1]}.{p[2]}.{p[3]}"


cdef int _flush(int fd, mmsghdr* smsgs, Py_ssize_t k, stats) except -1:
    """Send the k prepared replies with sendmmsg; one the kernel refuses is counted, the rest still go."""
    cdef Py_ssize_t sent = 0
    cdef int r, e
    while sent < k:
        with nogil:
            r = sendmmsg(fd, smsgs + sent, <unsigned int>(k - sent), 0)
            e = errno
        if r < 0:
            if e == EINTR:
                continue
            stats.dropped["send failed: " + _errname(e)] += 1
            sent += 1  # that one is lost; the next ones still go
        else:
            sent += r
    return 0


def serve(int fd, respond_fast, respond_full, stats, stop, after_full, Py_ssize_t batch=32,
          Py_ssize_t max_datagram=4096, double hold=0.0, Py_ssize_t flush_every=0,
          double pace=0.0, double pace_floor=20000.0, idle=None):
    """Serve ``fd`` (a blocking UDP socket with SO_RCVTIMEO) until ``stop.is_set()``.

    ``respond_fast`` may be None (every datagram takes the full path);
    ``after_full()`` is called after a batch in which the full path ran (the
    service wakes its enrol task there).

    ``hold`` (seconds, 0: off): when datagrams keep coming (the previous batch
    arrived less than 2 x ``hold`` before this one) and the batch was not full,
    sleep ``hold`` after answering it so that the next recvmmsg takes several
    datagrams at once: one
    wake-up and two system calls per batch instead of per datagram, for at most
    ``hold`` of added latency. An idle server still answers its first datagram
    at once.

    ``idle()`` (if given) is called whenever the receive timeout expired with
    nothing received: the service compiles fast-path templates there.

    ``pace`` (a factor, 0: off): send replies no faster on average than
    ``pace`` x the rate at which requests arrived (the kernel's receive
    timestamps, SO_TIMESTAMPNS, over windows of >= 10 ms of arrivals), and
    never slower than ``pace_floor`` replies per second; one ``batch`` of
    replies is the burst allowance (a GCRA token bucket; the loop sleeps after
    a batch that used it up). Without it, a backlog (the server was
    descheduled for a few ms, or a client sent a burst) is answered at the
    codec's speed, hundreds of thousands of replies per second, and in a
    relayed storm all of them go to one relay: a relay's (or perfdhcp's)
    socket with Linux's default 212992-byte buffer holds ~166 of them (1280
    bytes of kernel memory each on a veth) and drops the rest. The relay just
    forwarded the requests at the arrival rate, so it can take the replies at
    that rate; ``pace`` > 1 still drains a backlog (at ``pace - 1`` x the
    arrival rate). A backlog whose newest datagram already waited more than
    20 ms is drained at full speed instead: pacing it would only move the
    overflow into the server's own socket (measured: without warming, the
    server's 8 MB socket overflowed at 16,000-20,000 DORA/s).
    """
    cdef unsigned char* bufs = <unsigned char*>malloc(batch * max_datagram)
    cdef mmsghdr* rmsgs = <mmsghdr*>malloc(batch * sizeof(mmsghdr))
    cdef iovec* riov = <iovec*>malloc(batch * sizeof(iovec))
    cdef sockaddr_in* rnames = <sockaddr_in*>malloc(batch * sizeof(sockaddr_in))
    cdef mmsghdr* smsgs = <mmsghdr*>malloc(batch * sizeof(mmsghdr))
    cdef iovec* siov = <iovec*>malloc(batch * sizeof(iovec))
    cdef sockaddr_in* snames = <sockaddr_in*>malloc(batch * sizeof(sockaddr_in))
    if not (bufs and rmsgs and riov and rnames and smsgs and siov and snames):
        free(bufs); free(rmsgs); free(riov); free(rnames); free(smsgs); free(siov); free(snames)
        raise MemoryError()
    cdef Py_ssize_t i, k, hits, offers, acks
    cdef int n, r, e, port
    cdef unsigned int addr = 0
    cdef bint full_ran, busy, drain
    cdef long long hold_ns = <long long>(hold * 1e9), t_prev = 0, t_now
    # Pacing: gap_ns per reply; t_tat is the GCRA "theoretical arrival time" of the next reply;
    # arrivals: win_first / win_last / win_count of the current window, rate_est (per second).
    cdef long long gap_ns = 0, t_tat = 0, wait_ns, sent_ns, ts, win_first = 0, win_last = 0
    cdef long long win_count = 0
    cdef double rate_est = 0.0, limit
    cdef Py_ssize_t ctl_size = CMSG_SPACE(sizeof(timespec_t))
    cdef unsigned char* ctl = NULL
    cdef int one = 1
    cdef timespec_t pnap
    cdef object data, out, reply, dest, last_dest = None, keep
    cdef unsigned int last_addr = 0
    cdef int last_port = 0
    cdef bytes host
    replied = stats.replied
    try:
        if pace > 0:
            ctl = <unsigned char*>malloc(batch * ctl_size)
            if not ctl:
                raise MemoryError()
            if setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) != 0:
                pace = 0  # no receive timestamps: no pacing
        memset(rmsgs, 0, batch * sizeof(mmsghdr))
        memset(smsgs, 0, batch * sizeof(mmsghdr))
        for i in range(batch):
            riov[i].iov_base = bufs + i * max_datagram
            riov[i].iov_len = max_datagram
            rmsgs[i].msg_hdr.msg_iov = &riov[i]
            rmsgs[i].msg_hdr.msg_iovlen = 1
            rmsgs[i].msg_hdr.msg_name = &rnames[i]
            smsgs[i].msg_hdr.msg_iov = &siov[i]
            smsgs[i].msg_hdr.msg_iovlen = 1
            smsgs[i].msg_hdr.msg_name = &snames[i]
            smsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        while not stop.is_set():
            for i in range(batch):
                rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
                rmsgs[i].msg_hdr.msg_flags = 0
                if pace > 0:
                    rmsgs[i].msg_hdr.msg_control = ctl + i * ctl_size
                    rmsgs[i].msg_hdr.msg_controllen = ctl_size
            with nogil:
                n = recvmmsg(fd, rmsgs, <unsigned int>batch, MSG_WAITFORONE, NULL)
                e = errno
            if n < 0:
                if e == EAGAIN:  # SO_RCVTIMEO expired (EWOULDBLOCK on Linux): idle
                    if idle is not None:
                        idle()
                elif e != EINTR:
                    stats.dropped["receive failed: " + _errname(e)] += 1
                continue
            busy = False
            if hold_ns > 0:
                # Sustained traffic: this batch came less than 2 x hold after the previous one
                # (which, if it was held, came about one hold after the one before).
                t_now = _now_ns()
                busy = t_now - t_prev < 2 * hold_ns
                t_prev = t_now
            if pace > 0:  # the request arrival rate -> the gap between replies
                ts = 0
                for i in range(n):
                    ts = _arrival_ns(&rmsgs[i].msg_hdr)
                    if ts == 0:
                        continue
                    if win_first == 0 or ts - win_last > PACE_IDLE_NS:
                        win_first = ts
                        win_count = 0
                        rate_est = 0.0
                    else:
                        win_count += 1
                    win_last = ts
                    if ts - win_first >= PACE_WINDOW_NS:
                        limit = win_count * 1e9 / (ts - win_first)
                        rate_est = limit if rate_est == 0.0 else 0.5 * (rate_est + limit)
                        win_first = ts
                        win_count = 0
                limit = pace * rate_est
                drain = False
                if ts != 0:  # the newest datagram's queueing delay
                    clock_gettime(CLOCK_REALTIME, &pnap)
                    drain = <long long>pnap.tv_sec * 1000000000 + pnap.tv_nsec - ts > PACE_MAX_DELAY_NS
                if drain:  # a large backlog: at full speed
                    gap_ns = 0
                    t_tat = 0
                else:
                    if limit < pace_floor:
                        limit = pace_floor
                    gap_ns = <long long>(1e9 / limit)
            keep = []
            k = hits = offers = acks = 0
            full_ran = False
            for i in range(n):
                data = PyBytes_FromStringAndSize(<char*>bufs + i * max_datagram, rmsgs[i].msg_len)
                out = None
                if respond_fast is not None:
                    try:
                        out = respond_fast(data)
                    except Exception:  # the full path counts whatever broke
                        out = None
                if out is not None:
                    hits += 1
                    r = (<const unsigned char*>PyBytes_AS_STRING(out[0]))[OFF_REPLY_TYPE]
                    if r == DHCPOFFER:
                        offers += 1
                    elif r == DHCPACK:
                        acks += 1
                else:
                    full_ran = True
                    out = respond_full(
                        data, (_ntoa(rnames[i].sin_addr.s_addr), ntohs(rnames[i].sin_port)))
                    if out is None:
                        continue
                reply, dest = out
                if dest is not last_dest:
                    host = dest[0].encode("ascii")
                    if inet_pton(AF_INET, host, &addr) != 1:
                        stats.dropped["send failed: bad address"] += 1
                        continue
                    last_addr = addr
                    last_port = dest[1]
                    last_dest = dest
                memset(&snames[k], 0, sizeof(sockaddr_in))
                snames[k].sin_family = AF_INET
                snames[k].sin_port = htons(<unsigned short>last_port)
                snames[k].sin_addr.s_addr = last_addr
                siov[k].iov_base = PyBytes_AS_STRING(reply)
                siov[k].iov_len = PyBytes_GET_SIZE(reply)
                keep.append(reply)
                k += 1
                if k == flush_every:
                    _flush(fd, smsgs, k, stats)
                    k = 0
                    keep = []
            _flush(fd, smsgs, k, stats)
            wait_ns = 0
            if gap_ns > 0 and k > 0:
                sent_ns = _now_ns()
                if t_tat < sent_ns - gap_ns * batch:  # one batch of allowance
                    t_tat = sent_ns - gap_ns * batch
                t_tat += k * gap_ns
                wait_ns = t_tat - sent_ns
            if hits:
                stats.received += hits
                stats.fast += hits
                if offers:
                    replied["offer"] += offers
                if acks:
                    replied["ack"] += acks
            if full_ran:
                after_full()
            if busy and n < batch:  # a full batch: more are queued, read them now
                if wait_ns < hold_ns:
                    wait_ns = hold_ns
            if wait_ns > 0:  # the hold, or the pace's allowance is used up
                pnap.tv_sec = wait_ns // 1000000000
                pnap.tv_nsec = wait_ns % 1000000000
                with nogil:
                    nanosleep(&pnap, NULL)
    finally:
        free(bufs); free(rmsgs); free(riov); free(rnames); free(smsgs); free(siov); free(snames)
        free(ctl)
