"""Links: peers behind capped links and CPU shares, each in its own network namespace; one JSON object on stdout
(progress on stderr). The link harness of issue 13. Run as root.

Setup (benchmarks/_links_net.py): a hub network namespace holds a Linux bridge; every node (the bootstrap, the
solo peer, peers p0..p{N-1}) has its own namespace joined to the bridge by a veth pair, an address in
10.213.0.0/24, and its own cgroup-v1 ``cpu`` group (``cpuacct`` and ``memory`` too when mounted). Caps:
  uplink    ``tc tbf`` on the node's end of its veth (its egress): ``--rate-mbit`` (default 2)
  downlink  ``tc tbf`` on the hub's end (egress towards the node): ``--down-mbit`` (default 4 x the uplink,
            an asymmetric home line; the averaging sends and receives about the same bytes, so the uplink binds)
  CPU       cpu.cfs_quota_us / cpu.cfs_period_us = ``--cpu`` cores (default 0.4: 4 peers fit 2 cores with
            headroom; 0 = no limit) for the solo peer and every peer; ``--slow I=F`` makes peer I F x slower
            (quota / F); ``--slow-link I=F`` divides peer I's up- and downlink rates by F.
  burst / queue of each tbf: ``--burst-kb`` (16 KiB) and ``--latency-ms`` (200 ms). The bootstrap's link is not
  capped (a public node). There is no netem on this kernel, so no added latency.
The run's parent cpu group gets cpu.shares = 1024 x its nodes (else the whole swarm weighs as much as one task of
another job on the same cores, and other load starves it far more than it would starve plain processes).
A process joins its node's cgroups before it starts (a ``sh -c 'echo $$ > .../cgroup.procs; exec ip netns exec
NS ...'`` wrapper: the Popen PID is the program's; its children inherit the cgroups and the namespace).

Arms, all in one invocation, each on fresh data dirs and a fresh bootstrap:
  solo      one ``p2pmodel peer run`` without --initial-peers in its own namespace, same CPU cap (the baseline;
            ``--no-solo`` skips it); run once, before the swarm arms
  swarm arms ``--peers`` (4) peers joined to the bootstrap, each a name plus ``--set`` overrides: ``blocking``
            (none) and ``overlap`` (sync.overlap=true) are built in; ``--arm NAME=k=v,k=v`` adds or redefines one,
            ``--arms a,b`` selects them (default blocking,overlap). ``--seeds 0,1,2`` repeats the swarm arms with
            train.seed=S (arm order reversed on every other seed), ``--rate-mbit 1,2,4`` repeats them per uplink rate.
The recipe is ``--config`` (configs/tiny.toml: H = 50, train.torch_threads = 1) plus ``--set`` overrides
(``--fast-rounds`` adds _swarm_harness.FAST_ROUNDS: H = 20, 2 eval batches, smaller corpus, short timeouts), with
``--rounds`` R (6) measured: peers run without --max-rounds (a peer that must re-sync round R over a slow link
needs the others still serving that state: with --max-rounds R+1 they had left before a 6.7 MB download at
1.5 Mbit/s was done), the arm ends once every peer committed round R (or exited) or at ``--timeout-s``
(120 + 60 s per round), all peers are then stopped at once with SIGTERM, and rounds 1..R are measured.

Per peer (from its ``--json`` round events, each stamped with its arrival time on the harness's pipe, and the
hub-side veth counters sampled every ``--sample-s`` (0.5 s) and interpolated at those times):
  inner_steps_per_s   (inner_steps at its last round event - at its first) / (time of last - time of first)
  utilisation         sum of inner_s of its rounds after the first / that same wall time (compute share);
                      ``utilisation_without_eval``: the same with the events' eval_s taken out of the wall time
                      (evaluation is neither training nor communication; eval.every_rounds sets how often)
  steps_ratio_vs_solo inner_steps_per_s / the solo peer's
  exchange_cost_vs_inner  median over its rounds after the first of (round_s - inner_s) / inner_s: everything of
                      a round that is not inner steps (averaging, commit step, eval, checkpoint); the solo
                      peer's own figure (eval + checkpoint only) is in ``solo``, and ``exchange_cost_net_vs_inner``
                      subtracts it; ``exchange_cost_vs_solo_inner``: its median (round_s - inner_s) / the solo
                      peer's median inner_s (other jobs on the cores stretch a swarm peer's inner phase, and so
                      shrink the first ratio; this one divides by the inner phase the CPU quota allows);
                      ``gap_s_by_round``: time between its commits minus inner_s; ``median_exchange_wait_s``:
                      the events' exchange_wait_s (what the round waited for its exchange; overlap: what was left)
  val_loss_final, val_loss_by_round, digest per round (``digests``: rounds whose peers' digests differ, must be 0)
  wire_bytes          sent + received on its veth over the whole arm (start-up, DHT, gossip, control included)
  wire_bytes_per_round  between its first and last commit, / rounds; ``payload_bytes_per_round`` from the events'
                      bytes_sent + bytes_received (the averaging payload the peer counts);
                      ``control_bytes_per_round`` = the difference (DHT, gossip, commit step, state offers,
                      TCP/IP and libp2p framing of the payload itself); ``control_bytes_per_round_above_tcp``
                      the same less every packet's Ethernet/IP/TCP headers (66 bytes a packet, counted from
                      the veth's packet counters: most of them carry the payload, and their ACKs),
                      ``packets_per_round`` sent + received; ``control_bytes_per_s`` the same over
                      time; ``inner_phase_bytes_per_s``: bytes while it computes (each round's
                      [arrival - round_s, + inner_s]: background DHT/gossip traffic), and
                      ``control_bytes_per_round_outside_inner`` what is left per round (exchange, commit step;
                      blocking arms only: an overlapped exchange runs during the inner phase);
                      this split needs samples much shorter than the exchange (uncapped, a sub-second all-reduce
                      is smeared over a sample interval and partly counted in the inner phase)
  tcp_out_segs, tcp_retrans_segs, tcp_retrans_fraction: TCP segments its namespace sent over the whole arm and the
                      share sent again (/proc/net/snmp); tcp_retrans_bytes_max bounds their bytes (x 1448)
  (with --keep/--workdir, <run>/bytes_timeline.jsonl has every sample, in unix time)
  log: how often its log says re-syncing, a failed state download, a partial all-reduce ("received N% results"),
  no averaging group; cpu_s (cpuacct), mem_peak_mb (memory.max_usage_in_bytes: includes page cache charged to
  it), rss_peak_mb (sampled memory.stat total_rss), exit code.
Per run: round walls (T(r) = arrival of the last peer's round-r event, wall = T(r) - T(r-1), r >= 2), the
statistics of the above over peers (``fast`` = peers without --slow/--slow-link), the bootstrap's wire bytes,
MemAvailable's minimum, load averages. ``summary`` groups runs by (arm, rate) over seeds (mean, min, max) and
gives each arm's val loss against the first arm's of the same seed. Exit 0 when the harness worked (a
measurement, not a test), 1 when an arm could not start, 2 (one line) when not root or a tool is missing.

Run (as root):
  python benchmarks/links.py --peers 4 --rounds 6 --cpu 0.4 --rate-mbit 2 --arms blocking,overlap --seeds 0,1,2
  python benchmarks/links.py --arms blocking --rate-mbit 1,2,4            # calibration sweep, one solo
  python benchmarks/links.py --arms blocking --slow 3=2                   # one peer at half CPU
  python benchmarks/links.py --peers 16 --no-solo --arms blocking --cpu 0 --rate-mbit 0 \
      --set train.inner_steps=20 --set eval.batches=2 --set data.max_corpus_bytes=2000000
  python benchmarks/links.py --cleanup-stale                              # leftovers of a killed run

Measured 2026-12-02 on the 2-core, 23 GB machine, shared with other jobs the whole time (1-minute load average 5-17
during the 4-peer runs, up to 57 during the 16-peer one: every time figure here is stretched by that load), with
the peer code of the working tree between 06:00 and 07:15 UTC (others were changing it, sync.overlap included).
4 peers, configs/tiny.toml (H = 50), --cpu 0.4, --rounds 5, one solo per invocation (3.0-3.9 inner steps/s, inner
phase 11.4-14.7 s a round, (round_s - inner_s) / inner_s = 0.12: evaluation and checkpoint), blocking arm:
  uplink   (round_s-inner_s)/inner_s  vs solo inner  utilisation  round wall  control B/peer/round  digests
  2 Mbit   0.34                       0.52           0.75         31.4 s      287 K                 agree
  1.5      0.40 / 0.46 / 0.35         0.56/0.47/0.56 0.70/0.72/0.73 21-32 s   272 K / 256 K / 261 K agree
  1 Mbit   0.71                       0.77           0.62 (3 of 4) 21.6 s     176-318 K (3 peers)   round 5 forked
  (1.5 Mbit: three invocations, the third with --slow 3=2.) The exchange costs 47-56 % of the inner phase the CPU
  quota allows (the solo's) at 1.5-2 Mbit/s, and >= 50 % of the (load-stretched) measured inner phase only at 1
  Mbit/s: calibrate with --rate-mbit 1 here. The payload is 1.43 MB/peer/round (int4, 2(n-1)/n x 0.48 MB each way),
  the wire 1.69-1.71 MB. At 1 Mbit/s one peer got a partial all-reduce in round 5 ("received 92.2% results"), had
  to re-sync the 6.7 MB state, and every download timed out (40 s blob deadline; 6.7 MB at 1 Mbit/s is 54 s) or
  found the blob gone ("not found": the others had moved on): it kept its own state and its digest differs from
  round 5 on.
Control traffic at 4 peers (blocking, 1.5 Mbit/s, no re-sync): 256 K per peer per round = 10.4 KB/s, of which 6.1
KB/s flows while the peer computes (background DHT/gossip: ~90 K per 14.6 s inner phase) and ~148 K per round in the
exchange/commit window beyond the payload's own bytes; it grows with the round's length (60-s rounds of a starved
swarm measured 600-860 K). Target of the issue: <= 20 K.
One peer at half CPU (--slow 3=2, 1.5 Mbit/s, blocking): group of 4 every round, digests agree every round, the slow
peer contributes 129 inner steps against 245-250 (the round closes when the first peer is done); the fast peers'
utilisation is 0.72-0.74, the same as without a slow peer: the link, not the slow peer, is what they wait for. The
overlap arm (sync.overlap=true, being written at the time) in the same invocation: two fast peers at 0.88, the third
forked in round 4 (0.19); the slow peer was left out of every group from round 2 on and could not re-sync (40 s
download timeouts at 1.5 Mbit/s, then "cannot serve blob: not found"), 4 of 5 rounds with two or three digests;
without a slow peer (another invocation, 1.5 Mbit/s): 3 peers at 0.89-0.90 utilisation, no exchange wait, round wall
16-17 s against 21 s blocking, the fourth forked in round 5 the same way; val loss 2.311 against blocking's 2.216
(one seed).
After resumable re-syncs (later the same day, 09:59-10:24 UTC, load average 0.4-5: the session's own unit tests
ran alongside): ``--peers 4 --rounds 6 --cpu 0.4 --rate-mbit 1 --arms blocking,overlap --seeds 0,1,2``
  arm/seed    utilisation (per peer)   steps vs solo        val loss (vs blocking)  round wall  digests  re-syncs
  blocking/0  0.59-0.61                0.656-0.659          2.154                    23.8 s      agree    0
  blocking/1  0.59-0.62                0.661-0.665          2.165                    24.5 s      agree    0
  blocking/2  0.59-0.61                0.673-0.684          2.153                    23.3 s      agree    0
  overlap/0   0.88-0.89 (one 0.51)     0.945-0.953 (0.555)  2.197 (1.020)            16.5 s      agree    3
  overlap/1   0.08-0.36                0.09-0.42            2.356 (1.088)            62.9 s      split    9 (timed out)
  overlap/2   0.89-0.90                0.904-0.907          2.377 (1.104)            17.6 s      agree    0
  The blocking exchange costs 0.62-0.65 of the inner phase (>= 0.5: the issue's setting). Overlapped, no peer waits
  for its exchange (exchange_wait_s 0), but in seeds 0 and 1 partial all-reduces (a chunk late by more than
  sync.chunk_timeout_s = 5 s: at 0.4 cores the inner steps and the averager share the CPU quota) sent peers into
  6.7 MB re-syncs over 1 Mbit/s. Those now complete (downloads cut by a closed stream resumed from another peer:
  "cut at 1900544 bytes (resumable)", then "re-synced round 3"), but take ~2 minutes, and the swarm is rounds ahead
  by then: in seed 1 two peers chased the swarm until the arm timed out. The loss cost of the one-phase delay is
  2-10 % here (the mean lands late in a 1 Mbit/s phase), against 3 % simulated with the mean landing half-way.
After re-syncs by round object (2026-12-07, 11:56-12:34 UTC, 2 cores, load average 0.3-4, nothing else of this
session running; code at 65b3c0b): ``--peers 4 --rounds 6 --cpu 0.4 --rate-mbit 1 --arms blocking,overlap
--seeds 0,1,2`` (solo: 2.91 inner steps/s, utilisation 0.895: per-round evaluation and checkpoint cost 0.115 of
its inner phase)
  arm/seed    utilisation (per peer)  exchange cost net of solo's  val loss (vs blocking)  round wall  re-syncs
  blocking/0  0.545-0.579             0.756 of inner               2.149                   20.3 s      1 (partial)
  blocking/1  0.595-0.607             0.659                        2.145                   23.1 s      0
  blocking/2  0.573-0.589             0.714                        2.154                   21.1 s      0
  overlap/0   0.886-0.892             0.013                        2.314 (1.077)           14.3 s      0
  overlap/1   0.868-0.898                                          2.198 (1.025)           14.7 s      0
  overlap/2   0.878-0.897                                          2.409 (1.118)           14.1 s      0
  Overlapped, the exchange is hidden (exchange_wait_s 0; what is left of a round beyond the inner phase is the
  solo daemon's own evaluation and checkpoint: utilisation 0.883-0.891 against the solo's 0.895), all digests
  agree in all 6 runs. The one-phase delay costs 2.5-12 % of val loss at equal steps here (3 % simulated).
One peer at half CPU (``--slow 3=2``, same caps, seed 0):
  blocking     group of 4 in every round, digests agree, the slow peer contributes 119 inner steps to the fast
               peers' 300; fast peers' utilisation 0.542-0.567 (link-bound, as without it).
  overlap      two invocations. In the first the slow peer missed round 1's group and its whole-state re-sync
               (no package of round 0 to replay on yet: added since) chased the swarm; digests split in rounds
               5-6. In the second (--keep) it made round 1's group, then arrived ~4 s after the 3 s matchmaking
               window every round (its evaluation at 0.2 core comes between its inner phase and its next
               exchange) and trained alone, re-syncing every round by replaying the round's object (476,807
               bytes, ~6 s): digests agree every round, fast peers 0.878-0.892, its samples unused.
  overlap with sync.matchmaking_time_s=8 (``--arm wide=sync.overlap=true,sync.matchmaking_time_s=8``, seeds 0
               and 1): group of 4 in every round, digests agree every round, the slow peer contributes 133-169
               steps to 350; fast peers 0.856-0.880 (seed 1) and 0.626-0.701 (seed 0: partial all-reduces in
               round 6, repaired by replay). An overlapped exchange's matchmaking wait is hidden behind compute,
               so a wider window costs little there.
After the overlapped schedule's reordering for slower peers (2026-12-07, 14:43-15:11 UTC, 2 cores, nothing else of
this session running; code at 12c05ae/8dcfd9a): "ready" at the end of the phase, the next exchange started once
the commit step knows its winner (before re-sync, evaluation, checkpoint), and --set eval.every_rounds=3 (an
evaluation of this recipe costs ~10 % of its inner phase; ``utilisation_without_eval`` takes the events' eval_s
out). ``--peers 4 --rounds 6 --cpu 0.4 --rate-mbit 1 --arms blocking,overlap --seeds 0,1,2 --set
eval.every_rounds=3`` (solo: 3.66 inner steps/s, utilisation 0.948):
  arm/seed    utilisation (per peer)  without eval   steps vs solo  val loss (vs blocking)  round wall  re-syncs
  blocking/0  0.537-0.629             0.551-0.645    0.550-0.625    2.138                   21.3 s      1 (partial)
  blocking/1  0.543-0.604             0.556-0.619    0.639-0.680    2.173                   20.2 s      1 (partial)
  blocking/2  0.578-0.615             0.591-0.632    0.673-0.683    2.180                   20.3 s      0
  overlap/0   0.891-0.936             0.928-0.977    0.959-0.968    2.225 (1.041)           14.0 s      0
  overlap/1   0.909-0.935             0.945-0.975    0.975-0.987    2.225 (1.024)           14.3 s      0
  overlap/2   0.891-0.930             0.931-0.975    0.934-0.937    2.335 (1.071)           14.8 s      0
  Digests agree in all 6 runs; the blocking exchange costs 0.63-0.67 of the inner phase. What is left of an
  overlapped round beyond its inner phase is the solo daemon's own work (evaluation every third round, checkpoint,
  outer step, round object: ~0.25 s a round at 0.4 core) and the commit step's wait for the majority's digests.
  The val loss cost of the one-phase delay: 2.4-7.1 % (the mean lands ~2/3 into a 1 Mbit/s phase).
One peer at half CPU, overlapped (``--arms overlap --slow 3=2 --seeds 0,1 --no-solo --set eval.every_rounds=3``):
  group of 4 in every round of both seeds, no re-sync, one digest per round; the slow peer contributes 147 and 135
  inner steps to the fast peers' 350; fast peers' utilisation 0.917-0.939 and 0.898-0.932 (without eval 0.954-0.976
  and 0.939-0.973). The same command before (code at 439000d, whose exchange already started before the
  evaluation): the slow peer was alone in every round and re-synced every round; in seed 0 the fast peers' commit
  steps waited out their 17 s deadline for its digest (utilisation 0.10-0.32, digests split); in seed 1 a fast
  peer's partial all-reduce left the fast three without a majority among themselves, with the same wait
  (0.50-0.58).
One peer on a 10x slower link, overlapped (``--arms overlap --slow-link 3=10 --seeds 0 --no-solo --set
eval.every_rounds=3``: 0.1 Mbit/s up, 0.4 down; 2026-12-07, 17:00-17:43 UTC, one invocation at a time):
  before (code at fcc5aee): its parts and gossip pushes stalled; a lone commit of it made every fast peer give up
               its matchmaking, four peers held four digests and the tie went to its state, which nobody could then
               download from it in time; after 480 s the peers were at rounds 9, 4 and 7, the slow one at 2.
  sit-out (7b007a2-5fa4079: node/sit_out.py; matchmaking gives up only on a group's or everyone's commit; a lone
               round applies its delta on the codec's grid and gets a round object): the slow peer's round-1
               all-reduce lost most parts (23.5 % of its results) and it sat out from round 2; every re-sync was a
               476 KB replay and digests agreed (three runs). But the fast peers' matchmaking still failed in
               several rounds (all three "no group" in round 2 of every run, while the slow one was not even
               looking): lone rounds, ties, and a fast peer sent to sit out too; in the last run the fast peers
               fell to 1-group-per-peer rounds again.
  --peer-set 3=swarm.client_mode=true on top (its DHT node asks, never answers): group of 3 in every round from
               round 2, one digest every round, fast peers' utilisation 0.916-0.937 (0.958-0.978 without eval),
               round wall 12.5 s (median); the slow peer sat out rounds 2-3 and 5-6 (its try in round 4 missed),
               following by replay. So the slow peer's DHT node, answering the others' matchmaking lookups seconds
               late, is what broke their groups; the peer now says so in its log when it starts sitting out.
  DHT RPC timeout 3 s instead of 10 (a7837f3), no client mode: groups of 3 in rounds 2-3 (before: none in round 2
               of every run), one digest every round; but the slow peer's try in round 4 broke the fast peers'
               matchmaking again (groups of 2, 1) and rounds 5-6 fragmented: fast peers 0.54-0.79. Its tries come
               after 2, then 4, 8, ... rounds out.
With both (final code a7837f3), ``--arms blocking,overlap --slow-link 3=10 --peer-set 3=swarm.client_mode=true
--seeds 0,1 --no-solo --set eval.every_rounds=3`` (18:02-18:14 UTC): one digest every round in all four runs; the
  slow peer sat out rounds 2-3 and 5-6 in each (its try in round 4 missed); the fast peers averaged as a group of 3
  in rounds 2-6 (blocking: of 4 in round 4, the try). Fast peers' utilisation: blocking 0.604-0.611 / 0.605-0.628
  (as without a slow peer: link-bound), overlapped 0.807-0.917 / 0.878-0.931 (without eval 0.844-0.955 /
  0.916-0.973); round wall (median) blocking 16.1 / 12.6 s (3 peers' payload), overlapped 15.7 / 11.7 s.
One peer at a tenth of the CPU, overlapped (``--arms overlap --slow 3=10 --seeds 0 --no-solo --set
eval.every_rounds=3``, 0.04 core; code at 2e14a77, 18:46-18:54 UTC): the fast peers were not held up (group of 3
  in every round, one digest, 0.901-0.939 utilisation, 0.937-0.980 without eval; 29 rounds in 7.5 min). The slow
  peer took 2.5 min to start (imports at 0.04 core), caught up to round 8 by downloading the state (70 s), then
  trained round 9's whole phase (57 steps at 0.3 steps/s) while the swarm went on to round ~28: it never heard
  that round 9 was over (it joined after the others' round-9 messages), and its commit step ended alone with its
  own state: a fork that only a restart repairs.
  After 21b0918 (a round another peer's newest "digest" message has passed closes at once, and a commit step nobody
  else voted in catches up instead; 19:22-19:28 UTC, ``--timeout-s 420``): the slow peer caught up to round 9
  (71 s download), stopped round 10 after 2 steps, caught up to round 17 (85 s) and committed it with the swarm's
  digest: no fork. It follows ~6 rounds behind, by whole-state downloads. The fast peers: group of 3 in rounds
  1-6, one digest, 0.922-0.940 (0.958-0.980 without eval); after round 6 their logs show re-syncs and lone
  rounds (p1: 10 re-syncs over the run): each 6.7 MB catch-up fills one fast peer's 1 Mbit/s uplink for ~1 min.
No slow peer, same code (a7837f3 / dc53fc1, ``--arms blocking,overlap --seeds 1`` / ``--seeds 0``, --no-solo):
  blocking 0.613-0.636 / 0.607-0.634, overlapped 0.899-0.933 / 0.871-0.936 (without eval 0.936-0.975 /
  0.909-0.977), group of 4 in every round, one digest every round, val loss overlap/blocking 1.023 / 1.019.
Votes cast mid-phase (c9fde3f: an overlapped peer takes round r's outer step and pushes its vote as soon as r's mean
lands, between two inner steps; the commit step after the phase finds the others' votes there). Before (code at
b6d04d1, ``--arms overlap --seeds 0 --no-solo --set eval.every_rounds=3``, 20:19 UTC): 0.865-0.929 (0.905-0.978
without eval); the peer that finished its phase first waited out the close grace for the others' votes (1.0-1.2 s
of a 15 s round beyond its inner phase, 0.3-0.4 s for the others). After (2026-12-07, 20:32-20:52 UTC, nothing else
running; ``--arms blocking,overlap --seeds 0,1 --set eval.every_rounds=3``, solo 4.10 inner steps/s, 0.94):
  arm/seed    utilisation (per peer)  without eval   steps vs solo  val loss (vs blocking)  round wall  re-syncs
  blocking/0  0.597-0.620             0.615-0.638    0.586-0.591    2.153                   21.1 s      0
  blocking/1  0.549-0.577             0.562-0.590    0.594-0.615    2.145                   19.4 s      1 (partial)
  overlap/0   0.934-0.941             0.977-0.982    0.946-0.954    2.231 (1.036)           12.9 s      0
  overlap/1   0.763-0.937             0.792-0.977    0.787-0.966    2.214 (1.032)           13.6 s      3
  overlap/1   0.927-0.932             0.974-0.976    (--no-solo)                            13.7 s      0
  The blocking exchange costs 0.64-0.68 of the inner phase. In the first overlap/1 run a partial all-reduce in round 4
  left two peers alone in rounds 5 and 6 (logs not kept); the second run of the same seed (--keep) had none. What is
  left of an overlapped round is the evaluation every third round (1.3-1.8 s at 0.4 core: 0.04 of the wall time)
  and ~0.3 s a round (commit step, checkpoint). One peer at half CPU (``--arms overlap --slow 3=2 --seeds 0
  --no-solo``): group of 4 in every round, one digest every round, the slow peer 104 inner steps to the fast peers'
  247-250; fast peers 0.936-0.938 (0.974-0.980 without eval).
After matchmaking without the DHT and 300 s peer records (2026-12-07/08, 23:35-00:46 UTC, code at b874b65-0880bd2;
``--arms overlap --no-solo --set eval.every_rounds=3``): 12 overlapped runs over seeds 0-2, one digest every round in
all; without a partial all-reduce 0.973-0.983 without eval (0.89-0.94 with it), but 6 of the 12 had one (a chunk
past sync.chunk_timeout_s = 5 s) and re-synced, against 0 of 2 runs of the old code (ec7d767) in the same window.
Rounds are shorter (inner phases 11.7-12.7 s against 13.7-14.5 s: the DHT's matchmaking took CPU from the same
quota). TCP retransmissions (tcp_retrans_fraction, seed 1): 13-29 % of the segments sent blocking, 18-46 %
overlapped, with tbf's 200 ms queue (25 KB at 1 Mbit/s); 8-20 % with --latency-ms 1000, which still had partials in
one of two runs. Control on the wire (blocking, seed 0): 172-237 K per peer per round, 86-145 K above TCP/IP headers.
Scale (--cpu 0 --rate-mbit 0 --no-solo, H = 20, eval.batches=2, data.max_corpus_bytes=2000000, 5 rounds):
  peers  round wall (median, min-max)  wire bytes/peer (total; per round)  payload/round  digests  RSS (sum)
  4      12.3 s (12.0-14.9)            11.7 MB; 2.42 MB                    1.43 MB        agree    2.3 GB
  8      16.4 s (12.3-19.7)            13.5 MB; 2.19 MB                    1.66 MB        agree    4.8 GB
  16     22.4 s (19.4-28.1)            27.9 MB; 3.24 MB                    1.78 MB        agree    9.8 GB
  Each peer's processes hold ~600 MB (RSS); at 16 peers MemAvailable fell to 8.4 GB of 23.5 GB, load average 57 (at
  8 and 16 another job's 4 peers ran at the same time). At 16 the first round split into groups of 10, 5 and 1
  (peers were still joining on 2 cores); the six others re-synced (a 6.7 MB state each, all from one peer: 62.5 MB
  on its link) and rounds 2-5 were groups of 16; at 4 and 8 one partial all-reduce cost one re-sync each. Those
  re-syncs are in the control bytes (4 peers: 99 K-1.9 M per round, 8: 277 K-1.7 M, 16: 0.9-3.2 M).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _links_net as net  # noqa: E402
from _swarm_harness import (  # noqa: E402
    FAST_ROUNDS,
    TINY,
    Harness,
    bench_workdir,
    digest_table,
    install_signal_exit,
    load,
    log_excerpts,
    progress,
    ratio,
    round_walls,
    stats,
)
from churn import digest_summary  # noqa: E402

from p2pmodel.node.launch import cli_argv  # noqa: E402

BUILTIN_ARMS = {"blocking": [], "overlap": ["sync.overlap=true"]}
BASE_OVERRIDES = ["train.torch_threads=1"]
_KEY = re.compile(r",(?=[A-Za-z_][\w]*(?:\.[\w]+)+=)")  # a comma that starts the next section.key=value


# --- arguments ------------------------------------------------------------------------------------------------


def parse_arm(spec: str) -> tuple[str, list[str]]:
    """``NAME=k=v,k=v`` (or ``NAME`` / ``NAME=``: no overrides) -> (NAME, ["k=v", ...]); a value may hold commas
    (``a.b=[1,2]``): only a comma followed by ``section.key=`` starts the next override."""
    name, _, rest = spec.partition("=")
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z][\w-]*", name) or name == "solo":
        raise ValueError(f"bad arm name {name!r} (letters, digits, - and _; not 'solo')")
    overrides = [o.strip() for o in _KEY.split(rest)] if rest.strip() else []
    for o in overrides:
        if not re.fullmatch(r"[A-Za-z_]\w*(?:\.\w+)+=.*", o):
            raise ValueError(f"bad override {o!r} in arm {name!r} (want section.key=value)")
    return name, overrides


def parse_peer_sets(specs: list[str], peers: int) -> dict[int, list[str]]:
    """``I=k=v`` (repeatable) -> {I: ["k=v", ...]} with 0 <= I < peers."""
    out: dict[int, list[str]] = {}
    for spec in specs:
        i, _, override = spec.partition("=")
        if not i.strip().isdigit() or not 0 <= int(i) < peers or "=" not in override:
            raise ValueError(f"--peer-set {spec!r}: want I=key=value with 0 <= I < {peers}")
        out.setdefault(int(i), []).append(override)
    return out


def parse_factor(spec: str, peers: int) -> tuple[int, float]:
    """``I=F`` -> (I, F) with 0 <= I < peers and F >= 1."""
    i, _, f = spec.partition("=")
    idx, factor = int(i), float(f)
    if not 0 <= idx < peers or factor < 1:
        raise ValueError(f"{spec!r}: want PEER_INDEX=FACTOR with 0 <= PEER_INDEX < {peers} and FACTOR >= 1")
    return idx, factor


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=4, help="peers of each swarm arm (1..64)")
    ap.add_argument("--rounds", type=int, default=6, help="--max-rounds of every peer (>= 3)")
    ap.add_argument(
        "--rate-mbit", default="2", help="uplink cap per peer, Mbit/s; a list runs the arms per rate; 0 = none"
    )
    ap.add_argument("--down-mbit", type=float, default=None, help="downlink cap per peer [4 x the uplink]; 0 = none")
    ap.add_argument("--burst-kb", type=float, default=16.0, help="tbf burst (KiB)")
    ap.add_argument("--latency-ms", type=float, default=200.0, help="tbf queue length as a delay (ms)")
    ap.add_argument("--cpu", type=float, default=0.4, help="cores per peer (cgroup cpu quota); 0 = no limit")
    ap.add_argument("--slow", action="append", default=[], metavar="I=F", help="peer I gets cpu/F (repeatable)")
    ap.add_argument("--slow-link", action="append", default=[], metavar="I=F", help="peer I's rates / F (repeatable)")
    ap.add_argument(
        "--peer-set", action="append", default=[], metavar="I=k=v", help="override for peer I only (repeatable)"
    )
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=k=v,k=v", help="define an arm (repeatable)")
    ap.add_argument("--arms", default="blocking,overlap", help="swarm arms to run, in order")
    ap.add_argument("--seeds", default=None, help="e.g. 0,1,2: repeat the swarm arms with train.seed=S")
    ap.add_argument("--no-solo", action="store_true", help="skip the solo baseline")
    ap.add_argument("--fast-rounds", action="store_true", help="add _swarm_harness.FAST_ROUNDS (H=20, short eval)")
    ap.add_argument("--config", type=Path, default=TINY)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override for every arm (repeatable)")
    ap.add_argument("--timeout-s", type=float, default=None, help="limit per arm [120 + 60 s per round]")
    ap.add_argument("--sample-s", type=float, default=0.5, help="byte-counter sampling period (s)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch dir [a new temp dir]")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (logs, data dirs)")
    ap.add_argument("--cleanup-stale", action="store_true", help="remove what killed runs left behind, then exit")
    args = ap.parse_args(argv)
    if not 1 <= args.peers <= 64 or args.rounds < 3 or args.cpu < 0 or args.sample_s <= 0:
        ap.error("--peers in 1..64, --rounds >= 3, --cpu >= 0, --sample-s > 0")
    try:
        args.rates = _floats(args.rate_mbit)
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else [None]
        arms = dict(BUILTIN_ARMS)
        for spec in args.arm:
            name, ov = parse_arm(spec)
            arms[name] = ov
        args.arm_names = [a.strip() for a in args.arms.split(",") if a.strip()]
        args.slow_cpu = dict(parse_factor(s, args.peers) for s in args.slow)
        args.slow_net = dict(parse_factor(s, args.peers) for s in args.slow_link)
        args.peer_sets = parse_peer_sets(args.peer_set, args.peers)
    except ValueError as e:
        ap.error(str(e))
    unknown = [a for a in args.arm_names if a not in arms]
    if unknown or not args.arm_names or len(set(args.arm_names)) != len(args.arm_names):
        ap.error(f"--arms: unknown or repeated {unknown or args.arm_names}; defined: {sorted(arms)}")
    if not args.rates or any(r < 0 for r in args.rates) or (args.down_mbit is not None and args.down_mbit < 0):
        ap.error("--rate-mbit: one or more rates >= 0; --down-mbit >= 0")
    args.arm_defs = {a: arms[a] for a in args.arm_names}
    return args


def down_rate(args: argparse.Namespace, up: float) -> float:
    return args.down_mbit if args.down_mbit is not None else 4 * up


def base_overrides(args: argparse.Namespace) -> list[str]:
    return [*BASE_OVERRIDES, *(FAST_ROUNDS if args.fast_rounds else []), *args.overrides]


def run_overrides(args: argparse.Namespace, arm: str, seed: int | None) -> list[str]:
    seed_ov = [f"train.seed={seed}"] if seed is not None else []
    return [*base_overrides(args), *args.arm_defs.get(arm, []), *seed_ov]


# --- metrics (pure: plain events and samples in, numbers out) ------------------------------------------------


Samples = list[tuple[float, dict[str, tuple[int, ...]]]]  # (sent, received[, sent packets, received packets])
TCPIP_HEADER_BYTES = 66  # a packet's Ethernet (14), IPv4 (20) and TCP (20 + 12 of timestamps) headers on the veth


def wire_at(samples: Samples, node: str, t: float, packets: bool = False) -> float | None:
    """sent + received bytes (``packets``: packets) of ``node`` at time ``t``, linearly interpolated between
    samples (clamped at the ends)."""
    pick = slice(2, 4) if packets else slice(0, 2)
    pts = [(ts, sum(c[node][pick])) for ts, c in samples if node in c and (not packets or len(c[node]) >= 4)]
    if not pts:
        return None
    if t <= pts[0][0]:
        return float(pts[0][1])
    for (t0, v0), (t1, v1) in zip(pts, pts[1:], strict=False):
        if t0 <= t <= t1:
            return float(v0) if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return float(pts[-1][1])


def wire_total(samples: Samples, node: str) -> dict | None:
    """{sent, received, total} bytes of ``node`` between the first and the last sample."""
    pts = [c[node] for _t, c in samples if node in c]
    if len(pts) < 1:
        return None
    sent, recv = pts[-1][0] - pts[0][0], pts[-1][1] - pts[0][1]
    return {"sent": sent, "received": recv, "total": sent + recv}


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def peer_metrics(evs: list[tuple[float, dict]], samples: Samples | None = None, node: str | None = None) -> dict:
    """One peer's figures from its round events [(arrival time, event)] and the byte samples of its node."""
    evs = sorted(evs, key=lambda te: int(te[1]["round"]))
    out: dict = {
        "rounds": len(evs),
        "first_round": int(evs[0][1]["round"]) if evs else None,
        "last_round": int(evs[-1][1]["round"]) if evs else None,
        "val_loss_final": evs[-1][1].get("val_loss") if evs else None,
        "val_loss_by_round": {int(e["round"]): _r(e.get("val_loss"), 4) for _t, e in evs},
        "inner_steps_total": int(evs[-1][1].get("inner_steps", 0)) if evs else None,
        "group_size_by_round": {int(e["round"]): e.get("group_size") for _t, e in evs},
        "commit_missing_total": sum(int(e.get("commit_missing") or 0) for _t, e in evs),
        "sat_out_rounds": sorted(int(e["round"]) for _t, e in evs if e.get("sat_out")),  # node/sit_out.py
        "inner_steps_per_s": None,
        "utilisation": None,
        "utilisation_without_eval": None,
        "exchange_cost_vs_inner": None,
    }
    if len(evs) < 2:
        return out
    (t0, e0), (t1, e1) = evs[0], evs[-1]
    later = [e for _t, e in evs[1:]]
    seconds = t1 - t0
    steps = int(e1["inner_steps"]) - int(e0["inner_steps"])
    inner = sum(float(e.get("inner_s") or 0.0) for e in later)
    evaluating = sum(float(e.get("eval_s") or 0.0) for e in later)  # the evaluations inside the window
    overhead = {int(e["round"]): float(e["round_s"]) - float(e["inner_s"]) for e in later if "round_s" in e}
    costs = [(float(e["round_s"]) - float(e["inner_s"])) / float(e["inner_s"]) for e in later if e.get("inner_s")]
    gaps = {
        int(e["round"]): round(t - tp - float(e.get("inner_s") or 0.0), 3)
        for (tp, ep), (t, e) in zip(evs, evs[1:], strict=False)
        if int(e["round"]) == int(ep["round"]) + 1
    }
    payload = sum(int(e1.get(k, 0)) - int(e0.get(k, 0)) for k in ("bytes_sent", "bytes_received"))
    n = len(later)
    out.update(
        inner_steps=steps,
        seconds=round(seconds, 3),
        inner_steps_per_s=_r(steps / seconds) if seconds > 0 else None,
        inner_s_sum=round(inner, 3),
        utilisation=_r(inner / seconds) if seconds > 0 else None,
        eval_s_sum=round(evaluating, 3),
        utilisation_without_eval=_r(inner / (seconds - evaluating)) if seconds > evaluating else None,
        median_inner_s=_r(statistics.median(float(e.get("inner_s") or 0.0) for e in later)),
        median_overhead_s=_r(statistics.median(overhead.values())) if overhead else None,
        overhead_s_by_round={r: round(v, 3) for r, v in overhead.items()},
        exchange_cost_vs_inner=_r(statistics.median(costs)) if costs else None,
        median_exchange_wait_s=_r(statistics.median(waits)) if (waits := _waits(later)) else None,
        gap_s_by_round=gaps,
        payload_bytes_per_round=round(payload / n),
    )
    if samples and node:
        w0, w1 = wire_at(samples, node, t0), wire_at(samples, node, t1)
        if w0 is not None and w1 is not None:
            control = w1 - w0 - payload
            out.update(
                wire_bytes_per_round=round((w1 - w0) / n),
                control_bytes_per_round=round(control / n),
                control_bytes_per_s=round(control / seconds) if seconds > 0 else None,
            )
            p0, p1 = wire_at(samples, node, t0, packets=True), wire_at(samples, node, t1, packets=True)
            if p0 is not None and p1 is not None:
                headers = (p1 - p0) * TCPIP_HEADER_BYTES
                out.update(
                    packets_per_round=round((p1 - p0) / n),
                    control_bytes_per_round_above_tcp=round((control - headers) / n),
                )
            # the inner phase of a round: [arrival - round_s, arrival - round_s + inner_s] (the event follows the
            # commit by milliseconds): bytes then are background traffic, none of it averaging payload
            bg = 0.0
            for t, e in evs[1:]:
                if "round_s" in e and "inner_s" in e:
                    a = t - float(e["round_s"])
                    bg += (wire_at(samples, node, a + float(e["inner_s"])) or 0.0) - (wire_at(samples, node, a) or 0.0)
            out.update(
                inner_phase_bytes_per_s=round(bg / inner) if inner > 0 else None,
                control_bytes_per_round_outside_inner=round((control - bg) / n),
            )
    return out


def tcp_retransmissions(before: dict[str, int], after: dict[str, int]) -> dict:
    """TCP segments a peer's namespace sent over the arm, and the share it sent again (``tcp_retrans_fraction``;
    ``tcp_retrans_bytes_max`` = retransmissions x a full segment of 1448 bytes, an upper bound of their bytes)."""
    if not all(k in d for d in (before, after) for k in ("OutSegs", "RetransSegs")):
        return {}
    out_segs, again = after["OutSegs"] - before["OutSegs"], after["RetransSegs"] - before["RetransSegs"]
    return {
        "tcp_out_segs": out_segs,
        "tcp_retrans_segs": again,
        "tcp_retrans_fraction": _r(again / out_segs, 4) if out_segs > 0 else None,
        "tcp_retrans_bytes_max": again * 1448,
    }


def _waits(events: list[dict]) -> list[float]:
    """The events' exchange_wait_s (how long the round waited for its exchange; absent in older peers)."""
    return [float(e["exchange_wait_s"]) for e in events if e.get("exchange_wait_s") is not None]


def _vals(per_peer: dict, key: str, names=None) -> list[float]:
    return [p[key] for n, p in per_peer.items() if (names is None or n in names) and p.get(key) is not None]


def run_summary(per_peer: dict[str, dict], fast: list[str], solo: dict | None) -> dict:
    """Statistics over the peers of one run (``fast``: the names of peers without a slow factor)."""
    solo_rate = solo.get("inner_steps_per_s") if solo else None
    solo_cost = solo.get("exchange_cost_vs_inner") if solo else None
    solo_inner = solo.get("median_inner_s") if solo else None
    for p in per_peer.values():
        p["steps_ratio_vs_solo"] = ratio(p.get("inner_steps_per_s"), solo_rate)
        p["exchange_cost_vs_solo_inner"] = ratio(p.get("median_overhead_s"), solo_inner)
        cost = p.get("exchange_cost_vs_inner")
        p["exchange_cost_net_vs_inner"] = _r(cost - solo_cost) if cost is not None and solo_cost is not None else None
    vl_by_round: dict[int, list[float]] = {}
    for p in per_peer.values():
        for r, v in p.get("val_loss_by_round", {}).items():
            if v is not None:
                vl_by_round.setdefault(r, []).append(v)
    return {
        "utilisation": stats(_vals(per_peer, "utilisation")),
        "utilisation_fast": stats(_vals(per_peer, "utilisation", fast)),
        "utilisation_without_eval": stats(_vals(per_peer, "utilisation_without_eval")),
        "utilisation_without_eval_fast": stats(_vals(per_peer, "utilisation_without_eval", fast)),
        "inner_steps_per_s": stats(_vals(per_peer, "inner_steps_per_s")),
        "steps_ratio_vs_solo": stats(_vals(per_peer, "steps_ratio_vs_solo")),
        "steps_ratio_vs_solo_fast": stats(_vals(per_peer, "steps_ratio_vs_solo", fast)),
        "exchange_cost_vs_inner": stats(_vals(per_peer, "exchange_cost_vs_inner")),
        "exchange_cost_net_vs_inner": stats(_vals(per_peer, "exchange_cost_net_vs_inner")),
        "exchange_cost_vs_solo_inner": stats(_vals(per_peer, "exchange_cost_vs_solo_inner")),
        "median_exchange_wait_s": stats(_vals(per_peer, "median_exchange_wait_s")),
        "val_loss_final": stats(_vals(per_peer, "val_loss_final")),
        "val_loss_by_round": {r: round(statistics.fmean(v), 4) for r, v in sorted(vl_by_round.items())},
        "wire_bytes_per_peer": stats(_vals(per_peer, "wire_bytes")),
        "wire_bytes_per_peer_per_round": stats(_vals(per_peer, "wire_bytes_per_round")),
        "payload_bytes_per_peer_per_round": stats(_vals(per_peer, "payload_bytes_per_round")),
        "control_bytes_per_peer_per_round": stats(_vals(per_peer, "control_bytes_per_round")),
        "control_bytes_per_peer_per_s": stats(_vals(per_peer, "control_bytes_per_s")),
        "control_bytes_per_peer_per_round_above_tcp": stats(_vals(per_peer, "control_bytes_per_round_above_tcp")),
        "tcp_retrans_fraction": stats(_vals(per_peer, "tcp_retrans_fraction")),
        "inner_phase_bytes_per_peer_per_s": stats(_vals(per_peer, "inner_phase_bytes_per_s")),
        "control_bytes_per_peer_per_round_outside_inner": stats(
            _vals(per_peer, "control_bytes_per_round_outside_inner")
        ),
        "inner_steps_total": stats(_vals(per_peer, "inner_steps_total")),
    }


def group_runs(runs: list[dict]) -> dict:
    """{"arm@rate": spread over seeds}, and each run's val loss against the first arm's at the same seed/rate."""
    out: dict = {}
    first_arm = runs[0]["arm"] if runs else None
    for r in runs:
        key = f"{r['arm']}@{r['rate_mbit']:g}mbit"
        g = out.setdefault(key, {"arm": r["arm"], "rate_mbit": r["rate_mbit"], "seeds": [], "by_seed": {}})
        g["seeds"].append(r["seed"])
        s = r.get("summary") or {}
        g["by_seed"][str(r["seed"])] = {
            "utilisation_mean": (s.get("utilisation") or {}).get("mean"),
            "utilisation_fast_min": (s.get("utilisation_fast") or {}).get("min"),
            "utilisation_without_eval_mean": (s.get("utilisation_without_eval") or {}).get("mean"),
            "utilisation_without_eval_fast_min": (s.get("utilisation_without_eval_fast") or {}).get("min"),
            "exchange_cost_vs_inner_median": (s.get("exchange_cost_vs_inner") or {}).get("median"),
            "exchange_cost_vs_solo_inner_median": (s.get("exchange_cost_vs_solo_inner") or {}).get("median"),
            "val_loss_mean": (s.get("val_loss_final") or {}).get("mean"),
            "control_bytes_per_peer_per_round_mean": (s.get("control_bytes_per_peer_per_round") or {}).get("mean"),
            "round_wall_s_median": (r.get("round_wall_s") or {}).get("median"),
            "digests_agree": r.get("digests_agree"),
            "rounds_committed": r.get("rounds_committed"),
            "log_counts": r.get("log_counts"),
        }
    for r in runs:
        base = next(
            (b for b in runs if b["arm"] == first_arm and b["seed"] == r["seed"] and b["rate_mbit"] == r["rate_mbit"]),
            None,
        )
        mine = ((r.get("summary") or {}).get("val_loss_final") or {}).get("mean")
        theirs = ((base or {}).get("summary") or {}).get("val_loss_final", {}).get("mean") if base else None
        key = f"{r['arm']}@{r['rate_mbit']:g}mbit"
        out[key]["by_seed"][str(r["seed"])][f"val_loss_vs_{first_arm}"] = ratio(mine, theirs, 4)
    for g in out.values():
        rows = list(g["by_seed"].values())
        for k in (
            "utilisation_mean",
            "utilisation_fast_min",
            "utilisation_without_eval_mean",
            "utilisation_without_eval_fast_min",
            "exchange_cost_vs_inner_median",
            "exchange_cost_vs_solo_inner_median",
            "val_loss_mean",
            f"val_loss_vs_{first_arm}",
            "control_bytes_per_peer_per_round_mean",
            "round_wall_s_median",
        ):
            g[k] = stats([v[k] for v in rows if v.get(k) is not None])
        g["digests_agree_every_run"] = all(v["digests_agree"] for v in rows)
    return out


def targets(runs: list[dict], solo: dict | None, slow: bool) -> dict:
    """The issue's checks that apply to what ran."""
    out: dict = {"digests_agree_every_run": bool(runs) and all(r.get("digests_agree") for r in runs)}
    blocking = [r for r in runs if r["arm"] == "blocking" and r.get("summary")]
    if blocking:
        costs = [r["summary"]["exchange_cost_vs_inner"]["median"] for r in blocking]
        out["blocking_exchange_cost_ge_0.5_of_inner"] = all(c is not None and c >= 0.5 for c in costs)
        ctrl = [r["summary"]["control_bytes_per_peer_per_round"]["mean"] for r in blocking]
        out["control_bytes_per_peer_per_round_le_20KB"] = all(c is not None and c <= 20_000 for c in ctrl)
    overlap = [r for r in runs if r["arm"] == "overlap" and r.get("summary")]
    if overlap:
        u = [r["summary"]["utilisation"]["mean"] for r in overlap]
        out["overlap_utilisation_ge_0.95"] = all(x is not None and x >= 0.95 for x in u)
        if blocking:
            pairs = []
            for o in overlap:
                b = next((b for b in blocking if (b["seed"], b["rate_mbit"]) == (o["seed"], o["rate_mbit"])), None)
                if b:
                    pairs.append(
                        ratio(o["summary"]["val_loss_final"]["mean"], b["summary"]["val_loss_final"]["mean"], 4)
                    )
            out["overlap_val_loss_vs_blocking_by_seed"] = pairs
            good = [p for p in pairs if p is not None]
            out["overlap_val_loss_le_1.01x_blocking"] = bool(good) and statistics.fmean(good) <= 1.01
    if slow:
        fast = [r["summary"]["utilisation_fast"]["min"] for r in runs if r.get("summary")]
        out["fast_peers_utilisation_ge_0.95_with_a_slow_peer"] = bool(fast) and all(
            f is not None and f >= 0.95 for f in fast
        )
    return out


# --- processes ------------------------------------------------------------------------------------------------


class LinkHarness(Harness):
    """The benchmarks' Harness (timed events, descendant watcher, stop by PID) with every process started inside
    a node of ``topo`` (its namespace and cgroups) and listening on the node's bridge address."""

    def __init__(self, workdir: Path, config: Path, overrides: list[str], topo: net.Topology):
        self.topo = topo
        super().__init__(workdir, config, overrides)

    def start_bootstrap(self, node: str = "boot", timeout_s: float = 90.0) -> str:
        ip = self.topo.nodes[node].ip
        argv = cli_argv() + [
            "bootstrap",
            "--host-maddrs",
            f"/ip4/{ip}/tcp/0",
            "--json",
            "--identity",
            str(self.workdir / "bootstrap.key"),
        ]
        self.bootstrap = self._spawn("bootstrap", self.topo.wrap(node, argv))
        ev = self.bootstrap.wait_for(lambda e: "maddrs" in e, timeout_s)
        if ev is None:
            raise RuntimeError(f"bootstrap did not start:\n{self.bootstrap.stderr_tail()}")
        self.maddr = next((m for m in ev["maddrs"] if f"/ip4/{ip}/" in m), ev["maddrs"][0])
        return self.maddr

    def start_node_peer(self, node: str, max_rounds: int | None = None, join: bool = True, extra: list[str] = ()):
        ip = self.topo.nodes[node].ip
        argv = cli_argv() + [
            "peer",
            "run",
            "--config",
            str(self.config),
            "--json",
            "--data-dir",
            str(self.data_dir(node)),
            "--set",
            f'swarm.host_maddrs=["/ip4/{ip}/tcp/0"]',
        ]
        if max_rounds is not None:
            argv += ["--max-rounds", str(max_rounds)]
        if join and self.maddr:
            argv += ["--initial-peers", self.maddr]
        for o in [*self.overrides, *extra]:
            argv += ["--set", o]
        p = self.peers[node] = self._spawn(node, self.topo.wrap(node, argv))
        return p


def _wait(procs, rounds: int, deadline: float, label: str) -> bool:
    """Until every peer committed ``rounds`` or exited (the deadline: False)."""
    last = time.monotonic()
    while time.monotonic() < deadline:
        if all(p.proc.poll() is not None or p.max_round() >= rounds for p in procs):
            return True
        if time.monotonic() - last >= 20:
            last = time.monotonic()
            progress(f"{label}: rounds {[p.max_round() for p in procs]}, load {load()[0]}")
        time.sleep(0.2)
    return False


LOG_COUNTS = {
    "resyncs": re.compile(r"re-syncing"),
    "state_downloads_failed": re.compile(r"could not download state|state download from .* rejected"),
    "partial_allreduce": re.compile(r"Averaging: received [\d.]+% results"),
    "no_group": re.compile(r"no averaging group this round"),
}


STOPPED = re.compile(r"SIG(TERM|INT) received: stopping")  # the harness stops the peers after the last round


def log_counts(path: Path) -> dict[str, int]:
    """How often a peer's log says it re-synced, failed a download, got a partial all-reduce, found no group, up to
    the harness's stop (an overlapped peer is stopped with the next round's exchange in flight: its cut all-reduce
    is no failure of the run)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    stop = STOPPED.search(text)
    text = text[: stop.start()] if stop else text
    return {k: len(rx.findall(text)) for k, rx in LOG_COUNTS.items()}


def run_arm(args, topo: net.Topology, workdir: Path, arm: str, rate: float | None, seed, solo: dict | None) -> dict:
    """One run: the solo peer (arm 'solo') or a bootstrap and ``--peers`` peers; measured as in the docstring."""
    is_solo = arm == "solo"
    nodes = ["solo"] if is_solo else [f"p{i}" for i in range(args.peers)]
    overrides = run_overrides(args, arm, seed)
    label = arm if is_solo else f"{arm}@{rate:g}mbit" + (f"/seed{seed}" if seed is not None else "")
    progress(f"{label}: {len(nodes)} peer(s), {args.rounds} rounds, overrides {overrides}")
    started = time.monotonic()
    deadline = started + (args.timeout_s if args.timeout_s is not None else 120.0 + 60.0 * args.rounds)
    load_start = load()
    cpu0, tcp0 = topo.cpu_ns(), topo.tcp_segments()
    topo.reset_mem_peak()
    sampler = net.Sampler(topo, args.sample_s).start()
    result: dict = {"arm": arm, "seed": seed, "rate_mbit": rate, "overrides": overrides}
    if args.peer_sets and not is_solo:
        result["peer_overrides"] = {f"p{i}": ov for i, ov in sorted(args.peer_sets.items())}
    if not is_solo:
        result["down_mbit"] = down_rate(args, rate)
    run_dir = workdir / re.sub(r"[^\w.@-]", "_", label)
    with LinkHarness(run_dir, args.config, overrides, topo) as h:
        try:
            if not is_solo:
                h.start_bootstrap()
            # no --max-rounds: nobody leaves while another peer may still need its state; stopped at round R
            procs = [
                h.start_node_peer(n, join=not is_solo, extra=[] if is_solo else args.peer_sets.get(i, []))
                for i, n in enumerate(nodes)
            ]
            timed_out = not _wait(procs, args.rounds, deadline, label)
            if timed_out:
                progress(f"{label}: timed out at round {h.swarm_round()}")
        except RuntimeError as e:
            result["error"] = str(e)[-2000:]
            procs, timed_out = [], False
        h.stop()
        sampler.stop()
        if args.keep or args.workdir:  # the byte counters over time, to line traffic up with the peers' logs
            with open(run_dir / "bytes_timeline.jsonl", "w") as f:
                for t, c in sampler.samples:
                    f.write(json.dumps({"unix": round(h.to_wall(t), 2), "sent_received": c}) + "\n")
        cpu1, mem, tcp1 = topo.cpu_ns(), topo.mem(), topo.tcp_segments()
        per_peer = {}
        for p in procs:
            evs = [(t, e) for t, e in p.round_events() if int(e["round"]) <= args.rounds]
            m = peer_metrics(evs, sampler.samples, p.name)
            node = topo.nodes[p.name]
            m.update(
                exit_code=p.proc.returncode,
                log=log_counts(p.log_path),
                wire_bytes=(wire_total(sampler.samples, p.name) or {}).get("total"),
                cpu_s=_r((cpu1.get(p.name, 0) - cpu0.get(p.name, 0)) / 1e9, 2) if p.name in cpu1 else None,
                mem_peak_mb=round(mem[p.name]["peak"] / 2**20) if p.name in mem else None,
                rss_peak_mb=round(sampler.rss_peak[p.name] / 2**20) if p.name in sampler.rss_peak else None,
                cpu_cores=node.cpu / node.slow if node.cpu else None,
                up_mbit=node.up_mbit,
                down_mbit=node.down_mbit,
                **tcp_retransmissions(tcp0.get(p.name, {}), tcp1.get(p.name, {})),
            )
            per_peer[p.name] = m
        fast = [n for n in nodes if n in per_peer and not _slowed(args, n)]
        table = digest_table(procs, range(1, args.rounds + 1))
        digests = digest_summary(table)
        walls = round_walls(procs, range(2, args.rounds + 1))
        result.update(
            peers=len(nodes),
            rounds_target=args.rounds,
            rounds_committed=min(h.swarm_round(), args.rounds),
            rounds_all_peers=min((m["rounds"] for m in per_peer.values()), default=0),
            log_counts={k: sum(m["log"].get(k, 0) for m in per_peer.values()) for k in LOG_COUNTS},
            timed_out=timed_out,
            exit_codes={n: m["exit_code"] for n, m in per_peer.items()},
            digests=digests,
            digests_agree=bool(table) and digests["rounds_with_multiple_digests"] == 0,
            round_wall_s=stats(walls.values()),
            round_wall_s_by_round={r: round(w, 2) for r, w in walls.items()},
            summary=run_summary(per_peer, fast, solo) if not is_solo else None,
            per_peer=per_peer,
            bootstrap_wire_bytes=None if is_solo else wire_total(sampler.samples, "boot"),
            mem_peak_mb_sum=sum(m["peak"] for n, m in mem.items() if n in per_peer) // 2**20 if mem else None,
            rss_peak_mb_sum=sum(sampler.rss_peak.get(n, 0) for n in per_peer) // 2**20,
            mem_available_min_mb=sampler.mem_available_min // 2**20 if sampler.mem_available_min else None,
            killed_by_harness=h.killed_at_exit,
            log_warnings=log_excerpts(p.log_path for p in h.all_processes()),
            load_avg_start=load_start,
            load_avg_end=load(),
            wall_s=round(time.monotonic() - started, 1),
        )
        if any(not p.round_events() or p.proc.returncode not in (0, None) for p in procs):
            result["stderr_tails"] = {
                p.name: p.stderr_tail(12) for p in procs if not p.round_events() or p.proc.returncode != 0
            }
    s = result.get("summary") or {}
    progress(
        f"{label}: rounds {result.get('rounds_all_peers')}/{args.rounds}, digests agree {result.get('digests_agree')}, "
        f"utilisation {(s.get('utilisation') or {}).get('mean')}, exchange/inner "
        f"{(s.get('exchange_cost_vs_inner') or {}).get('median')} (vs solo inner "
        f"{(s.get('exchange_cost_vs_solo_inner') or {}).get('median')}), "
        f"round wall {result['round_wall_s']['median']} s, "
        f"control B/peer/round {(s.get('control_bytes_per_peer_per_round') or {}).get('mean')}, "
        f"{result.get('log_counts')}"
    )
    return result


def _slowed(args, node: str) -> bool:
    if not re.fullmatch(r"p\d+", node):
        return False
    i = int(node[1:])
    return i in args.slow_cpu or i in args.slow_net


def setup_topology(args, topo: net.Topology) -> None:
    topo.add_node("boot")
    if not args.no_solo:
        topo.add_node("solo")
        topo.limit_cpu("solo", args.cpu)
    for i in range(args.peers):
        topo.add_node(f"p{i}")
        topo.limit_cpu(f"p{i}", args.cpu, args.slow_cpu.get(i, 1.0))


def shape_peers(args, topo: net.Topology, rate: float) -> None:
    for i in range(args.peers):
        f = args.slow_net.get(i, 1.0)
        topo.shape(f"p{i}", rate / f, down_rate(args, rate) / f)


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "links.py needs root (network namespaces, tc, cgroups)"
    missing = net.missing_tools()
    if missing:
        return f"links.py needs {', '.join(missing)} on PATH"
    if not (net.CGROOT / "cpu" / "cgroup.procs").exists():
        return "links.py needs the cgroup-v1 cpu controller at /sys/fs/cgroup/cpu"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.cleanup_stale:
        found = [net.cleanup(s) for s in net.stale_suffixes(net.list_netns(), net.pid_alive)]
        print(json.dumps({"benchmark": "links", "cleanup_stale": found}))
        return 0
    install_signal_exit()
    args.config = args.config.resolve()
    started = time.monotonic()
    result: dict = {
        "benchmark": "links",
        "config": args.config.name,
        "overrides": base_overrides(args),
        "peers": args.peers,
        "rounds": args.rounds,
        "rates_mbit": args.rates,
        "down_mbit": args.down_mbit if args.down_mbit is not None else "4x uplink",
        "burst_kb": args.burst_kb,
        "latency_ms": args.latency_ms,
        "cpu_per_peer": args.cpu,
        "slow_cpu": args.slow_cpu,
        "slow_link": args.slow_net,
        "arms": args.arm_defs,
        "seeds": args.seed_list,
        "load_avg_start": load(),
    }
    rc = 0
    with bench_workdir(args.workdir, args.keep, "links") as workdir:
        topo = net.Topology(burst_kb=args.burst_kb, latency_ms=args.latency_ms)
        try:
            with topo:
                setup_topology(args, topo)
                progress(f"topology {topo.hub}: {len(topo.nodes)} namespaces, bridge {topo.bridge}, {topo.controllers}")
                solo = None
                if not args.no_solo:
                    result["solo"] = run_arm(args, topo, workdir, "solo", None, None, None)
                    solo = result["solo"]["per_peer"].get("solo")
                    result["solo"]["summary"] = {
                        k: (solo or {}).get(k)
                        for k in (
                            "inner_steps_per_s",
                            "utilisation",
                            "median_inner_s",
                            "exchange_cost_vs_inner",
                            "val_loss_final",
                        )
                    }
                runs = result["runs"] = []
                for rate in args.rates:
                    shape_peers(args, topo, rate)
                    for k, seed in enumerate(args.seed_list):
                        order = args.arm_names if k % 2 == 0 else list(reversed(args.arm_names))
                        for arm in order:
                            runs.append(run_arm(args, topo, workdir, arm, rate, seed, solo))
                result["summary"] = group_runs(runs)
                result["targets"] = targets(runs, solo, bool(args.slow_cpu or args.slow_net))
                rc = 1 if any("error" in r for r in runs) else 0
        except Exception as e:  # still print what was measured, and tear down
            result["error"] = f"{type(e).__name__}: {e}"[-2000:]
            progress(f"error: {result['error']}")
            rc = 1
        finally:
            result["teardown"] = {"suffix": topo.sfx, "left_after": _leftovers(topo.sfx)}
    result.update(
        workdir=str(workdir) if (args.keep or args.workdir) else None,
        cpus=os.cpu_count(),
        mem_total_mb=_mem_total_mb(),
        load_avg_end=load(),
        wall_s=round(time.monotonic() - started, 1),
    )
    print(json.dumps(result, default=str))
    return rc


def _leftovers(sfx: str) -> dict:
    ns = [n for n in net.list_netns() if n.startswith(f"{net.PREFIX}-{sfx}-")]
    cg = [str(p) for c in ("cpu", "cpuacct", "memory") for p in [net.CGROOT / c / f"{net.PREFIX}-{sfx}"] if p.exists()]
    return {"netns": ns, "cgroups": cg}


def _mem_total_mb() -> int | None:
    try:
        return int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    sys.exit(main())
