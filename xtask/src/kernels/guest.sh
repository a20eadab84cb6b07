#!/bin/sh
# /init of a pathtrace kernel-matrix guest: mounts what a host has, loads the modules a
# container host loads, runs the smoke checks and powers off. Each check prints one line
# `PT-CHECK <name> pass|fail|skip [why]`; a failed check's output follows as `PT-OUT` lines.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mkdir -p /run/netns
ip link set lo up
for m in veth bridge nf_conntrack nf_nat nf_tables nft_chain_nat nft_masq nft_compat nft_ct \
    xt_MASQUERADE xt_nat xt_conntrack xt_comment xt_addrtype xt_mark iptable_nat \
    iptable_filter nf_conntrack_netlink sch_ingress cls_bpf; do
    modprobe "$m" 2>/dev/null
done
KV=$(uname -r)
echo "PT-KERNEL $KV"

out=/tmp/out
check() {
    name=$1
    shift
    if "$@" >"$out" 2>&1; then
        echo "PT-CHECK $name pass"
    else
        echo "PT-CHECK $name fail"
        tail -n 25 "$out" | sed 's/^/PT-OUT /'
    fi
}
show() { sed 's/^/PT-OUT /' "$out"; }

# The kernel's version as a number: 5.10 -> 510, 6.12 -> 612.
kver=$(echo "$KV" | awk -F'[.-]' '{ printf "%d", $1 * 100 + $2 }')

doctor() { pathtrace doctor; }
check doctor doctor
show

# The lab demo: ICMP, TCP and UDP out and back through the bridge and MASQUERADE, 4 hops each
# way, and no loss claimed (every exchange of the demo succeeds).
demo() {
    pathtrace lab demo --tc-mode "$1" --duration 3s >/tmp/demo 2>&1 || { cat /tmp/demo; return 1; }
    cat /tmp/demo
    for want in "icmp 10.200.1.2" "tcp 10.200.1.2" "udp 10.200.1.2" "=> SNAT (MASQUERADE)" \
        "<= de-NAT" "-> host:pt1-up0 egress" "back: host:pt1-up0 ingress"; do
        grep -qF -- "$want" /tmp/demo || { echo "missing: $want"; return 1; }
    done
    if grep -q '^  lost:' /tmp/demo; then echo "a loss was claimed"; return 1; fi
}
check demo-netlink demo netlink
if [ "$kver" -ge 606 ]; then check demo-tcx demo tcx; else echo "PT-CHECK demo-tcx skip TCX needs 6.6"; fi

pathtrace lab up --name k1 >/dev/null 2>&1 || echo "PT-CHECK lab-up fail"

# Waits until the trace writing to $1 says it is attached (60 s at most: loading takes a few
# seconds under qemu's emulation, several times that when the host is busy); fails at once when
# the trace (pid $2) ended before that.
attached() {
    i=0
    until grep -q '^tracing ' "$1"; do
        i=$((i + 1))
        kill -0 "$2" 2>/dev/null || { echo "the trace ended before it attached"; cat "$1"; return 1; }
        [ $i -gt 600 ] && { echo "not attached after 60 s"; cat "$1"; return 1; }
        sleep 0.1
    done
}

# A forced drop (ICMP from the container dropped in FORWARD) pinned to the hop where it happened.
drop() {
    iptables -I FORWARD -s 10.200.1.2 -p icmp -j DROP
    pathtrace --netns k1-ctr --to 10.200.2.2 --duration 4s >/tmp/drop 2>&1 &
    pid=$!
    attached /tmp/drop $pid && ip netns exec k1-ctr ping -c 3 -i 0.2 -W 1 10.200.2.2 >/dev/null 2>&1
    wait $pid
    rc=$?
    iptables -D FORWARD -s 10.200.1.2 -p icmp -j DROP
    cat /tmp/drop
    [ $rc -eq 0 ] && grep -q 'lost: 3 after host:k1-br0 ingress' /tmp/drop
}
check drop drop

check verify-pass pathtrace verify --netns k1-ctr --to 10.200.2.2 --expect-snat 10.200.2.1
verify_fail() {
    pathtrace verify --netns k1-ctr --to 10.200.2.2 --expect-snat 10.9.9.9
    [ $? -eq 1 ]
}
check verify-fail verify_fail

capture() {
    pathtrace --netns k1-ctr --to 10.200.2.2 --duration 4s -w /tmp/c.pcapng >/tmp/cap 2>&1 &
    pid=$!
    attached /tmp/cap $pid && ip netns exec k1-ctr ping -c 5 -i 0.2 10.200.2.2 >/dev/null 2>&1
    wait $pid || { cat /tmp/cap; return 1; }
    pathtrace show /tmp/c.pcapng >/tmp/show 2>&1 || { cat /tmp/show; return 1; }
    cat /tmp/show
    grep -q '^icmp 10.200.1.2' /tmp/show && grep -q '=> SNAT' /tmp/show
}
check capture capture

# A filter expression (issue #14), translated and loaded by this kernel's verifier: a live trace
# with expression $1 while the container pings the wan host and sends it UDP; then each further
# argument is a line pattern the output must hold, or must not when it starts with `!`.
expression() {
    pathtrace --netns k1-ctr --to 10.200.2.2 --duration 4s "$1" >/tmp/expr 2>&1 &
    pid=$!
    attached /tmp/expr $pid && {
        ip netns exec k1-ctr ping -c 3 -i 0.2 -W 1 10.200.2.2 >/dev/null 2>&1
        ip netns exec k1-ctr bash -c 'for i in 1 2 3; do echo x >/dev/udp/10.200.2.2/7; sleep 0.2; done'
    }
    wait $pid || { cat /tmp/expr; return 1; }
    cat /tmp/expr
    shift
    for want in "$@"; do
        case $want in
        !*) ! grep -q -- "${want#!}" /tmp/expr || { echo "unexpected: ${want#!}"; return 1; } ;;
        *) grep -q -- "$want" /tmp/expr || { echo "missing: $want"; return 1; } ;;
        esac
    done
}
check expression-udp expression 'udp and not port 53' '^udp 10.200.1.2' '=> SNAT' '!^icmp '
# A byte test keeps only the echo requests; the replies come back because the trace follows
# the flow, not because the expression keeps them.
check expression-follow expression 'icmp[icmptype] == icmp-echo' '^icmp 10.200.1.2' \
    'back: host:k1-up0 ingress' '<= de-NAT'

# Nothing of pathtrace's left on any interface of the lab.
clean() {
    for dev in k1-br0 k1-veth0 k1-up0; do
        [ -z "$(tc filter show dev $dev ingress)$(tc filter show dev $dev egress)" ] || { echo "filters on $dev"; return 1; }
        tc qdisc show dev $dev | grep -q clsact && { echo "clsact on $dev"; return 1; }
    done
    [ -z "$(ip netns exec k1-ctr tc filter show dev eth0 egress)" ] || { echo "filters in k1-ctr"; return 1; }
    ip netns exec k1-ctr tc qdisc show dev eth0 | grep -q clsact && { echo "clsact in k1-ctr"; return 1; }
    return 0
}
# Starts a netlink-mode trace, waits until it is attached, sends it signal $1.
leave() {
    pathtrace --netns k1-ctr --to 10.200.2.2 --tc-mode netlink --duration 60s >/tmp/leave 2>&1 &
    pid=$!
    attached /tmp/leave $pid || return 1
    kill -"$1" $pid
    wait $pid
    [ "$1" = KILL ] && pathtrace cleanup
    clean
}
check no-trace-INT leave INT
check no-trace-TERM leave TERM
check no-trace-KILL-cleanup leave KILL

pathtrace lab down k1 >/dev/null 2>&1
labs_gone() { [ -z "$(ip netns list)" ]; }
check lab-down labs_gone

echo PT-DONE
echo o >/proc/sysrq-trigger
sleep 10
