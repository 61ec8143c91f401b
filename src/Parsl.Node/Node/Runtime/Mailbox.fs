namespace Parsl.Node.Runtime

#nowarn "9" // native pointers: the futex timeout is a timespec on the stack.

open System
open System.Collections.Concurrent
open System.Runtime.InteropServices
open System.Threading
open Microsoft.FSharp.NativeInterop
open System.Threading.Tasks

[<AutoOpen>]
module internal MailboxTiming =
    /// How long a sleeping consumer waits before looking at its queue again on its own (milliseconds). Wake-ups
    /// are signalled, so this only bounds the cost of a wake-up that never comes.
    [<Literal>]
    let WakeCheck = 50

    /// How many short spins a consumer makes, looking at its queue, before it sleeps (about 20 µs here). In a
    /// dependency chain the next item arrives within microseconds of the last one; catching it awake saves two
    /// futex calls and a wake-up per hop (measured: a chain hop on the thread pool 22 → 9 µs).
    [<Literal>]
    let Spins = 40

/// Linux's futex: sleep on a 32-bit word while it holds a value, and wake sleepers, one system call each and no
/// lock in user space.
module internal Futex =
    [<DllImport("libc", EntryPoint = "syscall")>]
    extern int64 private sys(int64 number, nativeint word, int op, int value, nativeint timeout, nativeint word2, int value3)

    let private number =
        if not (OperatingSystem.IsLinux()) then 0L
        else
            match RuntimeInformation.ProcessArchitecture with
            | Architecture.X64 -> 202L
            | Architecture.Arm64 -> 98L
            | _ -> 0L

    /// Whether futexes can be used here (Linux on x64 or arm64).
    let available = number <> 0L

    /// Sleeps while `*word = value`, at most `ms` milliseconds (wakes may be spurious).
    let wait (word: nativeint) (value: int) (ms: int) =
        let timeout = NativePtr.stackalloc<int64> 2
        NativePtr.set timeout 0 (int64 (ms / 1000))
        NativePtr.set timeout 1 (int64 (ms % 1000) * 1_000_000L)
        sys (number, word, 128 (* FUTEX_WAIT_PRIVATE *), value, NativePtr.toNativeInt timeout, 0n, 0) |> ignore

    /// Wakes up to `n` threads sleeping on `word`.
    let wake (word: nativeint) (n: int) =
        sys (number, word, 129 (* FUTEX_WAKE_PRIVATE *), n, 0n, 0n, 0) |> ignore

/// A counting semaphore on a futex. `SemaphoreSlim` takes a monitor on both sides: a release contends with the
/// waiter that is waking up, and ten idle threads whose waits timed out together spun on that monitor in
/// `sched_yield` (measured: 65 yields per timeout per thread, thousands of context switches a second on an idle
/// executor, CPU the busy threads needed). Here a release is an atomic add, plus a wake call only when someone sleeps.
[<Sealed>]
type internal LightSemaphore() =
    // Pinned, so the kernel can be given its address.
    let cell = GC.AllocateArray<int>(1, pinned = true)
    let address = Marshal.UnsafeAddrOfPinnedArrayElement(cell, 0)
    let mutable sleepers = 0
    let fallback = if Futex.available then null else new SemaphoreSlim(0)

    /// Adds `n` to the count and wakes as many sleepers.
    member _.Release(n: int) =
        if isNull fallback then
            Interlocked.Add(&cell[0], n) |> ignore
            // The add above is a full fence, so a sleeper that registered before it is seen here, and one that
            // registers after it finds the count non-zero and does not sleep.
            if Volatile.Read(&sleepers) > 0 then Futex.wake address n
        else
            fallback.Release n |> ignore

    member this.Release() = this.Release 1

    /// How many threads are in the futex wait now (0 without futexes): tests wait on it to release into sleepers.
    member _.Sleepers = Volatile.Read(&sleepers)

    /// Takes one from the count, waiting up to `ms` milliseconds for it; false if none came.
    member _.Wait(ms: int) : bool =
        if not (isNull fallback) then fallback.Wait ms
        else
            let deadline = Environment.TickCount64 + int64 ms
            let mutable result = None
            // A few microseconds of spinning first, as SemaphoreSlim does: a release that comes that soon costs no
            // sleep and wake-up (measured: thread-pool chain hop 16 → 12 µs with it).
            let mutable spinner = SpinWait()
            while result.IsNone do
                let c = Volatile.Read(&cell[0])
                if c > 0 then
                    if Interlocked.CompareExchange(&cell[0], c - 1, c) = c then result <- Some true
                elif not spinner.NextSpinWillYield then spinner.SpinOnce(-1)
                else
                    let left = deadline - Environment.TickCount64
                    if left <= 0L then result <- Some false
                    else
                        Interlocked.Increment(&sleepers) |> ignore
                        // Sleeps only while the count is still zero (checked atomically by the kernel).
                        Futex.wait address 0 (int left)
                        Interlocked.Decrement(&sleepers) |> ignore
            result.Value

/// Whether a consumer's short spin before sleeping pays off, learned from the last ones: where items come
/// microseconds apart (a chain on the thread pool) it spins; where they come hundreds of microseconds apart (an HTEx
/// chain, whose results cross processes) spinning only takes CPU from the threads that would bring the next item, so
/// it stops, and tries again now and then. Races on the score are harmless: it is a hint.
[<Sealed>]
type internal SpinPolicy() =
    let mutable score = 8
    let mutable skipped = 0

    /// Spins until `ready` holds or `Spins` spins have passed, when spinning has been paying off; true if it held.
    member _.SpinFor(ready: unit -> bool) =
        if score <= 0 && (skipped <- (skipped + 1) % 32; skipped <> 0) then false
        else
            let mutable n = 0
            let mutable seen = ready ()
            while not seen && n < Spins do
                Thread.SpinWait 30
                n <- n + 1
                seen <- ready ()
            score <- (if seen then 8 else max 0 (score - 1))
            seen

/// A queue with many producers and one consumer thread. Producers never take a lock: they enqueue, and
/// wake the consumer only when it is asleep. (Measured: `Channel<T>.TryWrite` takes a lock per item, and at
/// 100,000 tasks/s that lock was half of the kernel loop's time.)
[<Sealed>]
type internal Mailbox<'T>() =
    let queue = ConcurrentQueue<'T>()
    let spin = SpinPolicy()
    let signal = LightSemaphore()
    let mutable sleeping = 0
    // Bit 0: completed. The rest: twice the number of posts that found bit 0 clear. A post's check and its count are
    // one atomic add, so the atomic or in `Complete` learns exactly how many items will ever be enqueued, even with
    // posts between their check and their enqueue; the consumer ends once it has taken that many. With a separate
    // flag, a post could pass the check, the consumer end on an empty queue, and the item be enqueued after it, lost
    // although `Post` said true (pinned by MailboxTests' close property). One atomic per post: an earlier version
    // counted posts in flight up and down, two atomics on a line every producer writes (the thread-pool no-op row
    // lost several per cent to it).
    let mutable state = 0L
    // How many items will ever be enqueued, set by the first `Complete`; -1 before.
    let mutable expected = -1L
    // Items taken so far: written by the consumer on every take, so kept on a cache line of its own (slot 8 of its
    // own array, 64 bytes past the array's header) rather than beside `state`, which every post writes.
    let taken = Array.zeroCreate<int64> 16

    let wake () =
        if Volatile.Read(&sleeping) = 1 && Interlocked.CompareExchange(&sleeping, 0, 1) = 1 then signal.Release()

    /// Completed and every item that will ever be enqueued taken (consumer only).
    let ended () =
        let e = Volatile.Read(&expected)
        e >= 0L && taken[8] = e

    /// Adds an item; false once the mailbox is completed (then the item is never taken).
    member _.Post(item: 'T) =
        if Interlocked.Add(&state, 2L) &&& 1L = 0L then
            queue.Enqueue item
            // A full fence (on the stack: no shared line): the enqueue is visible before `sleeping` is read in `wake`
            // (x86 reorders a store with a later load), so a consumer that set the flag before looking at the queue
            // is either seen or sees the item.
            Interlocked.MemoryBarrier()
            wake ()
            true
        else
            false

    /// No more items will be posted; the consumer drains what is left, then `WaitToRead` returns false.
    member _.Complete() =
        let before = Interlocked.Or(&state, 1L)
        // An exchange, not a volatile write: a full fence before `sleeping` is read in `wake`, as in `Post`.
        if before &&& 1L = 0L then Interlocked.Exchange(&expected, before >>> 1) |> ignore
        wake ()

    /// Takes an item if there is one (consumer only).
    member _.TryTake(item: byref<'T>) =
        if queue.TryDequeue(&item) then
            taken[8] <- taken[8] + 1L
            true
        else
            false

    /// Blocks until there is an item (true) or the mailbox is completed and empty (false). Consumer only. Every
    /// item for which `Post` returned true is seen before it returns false.
    member _.WaitToRead() : bool =
        let mutable result = 0
        while result = 0 do
            if not queue.IsEmpty || spin.SpinFor(fun () -> not queue.IsEmpty) then result <- 1
            elif ended () then result <- 2
            else
                // A full fence, not a volatile write: the store of `sleeping` must not pass the load of the queue
                // below (x86 reorders a store with a later load), or a producer could miss the flag and we the item.
                Interlocked.Exchange(&sleeping, 1) |> ignore
                if not queue.IsEmpty || ended () then
                    if Interlocked.CompareExchange(&sleeping, 0, 1) <> 1 then signal.Wait(WakeCheck) |> ignore
                else
                    // Completed with posts still to enqueue also sleeps here: each of them wakes us when done.
                    // Bounded: a wake-up is never needed to make progress, only to make it prompt.
                    signal.Wait(WakeCheck) |> ignore
        result = 1

/// A queue with one producer and several consumer threads (an executor's workers). Enqueueing takes no
/// lock; idle consumers are woken through a semaphore only when some are waiting.
[<Sealed>]
type internal WorkQueue<'T>() =
    let queue = ConcurrentQueue<'T>()
    let spin = SpinPolicy()
    let signal = LightSemaphore()
    let mutable idle = 0
    // Wake-ups issued but not yet taken. A worker woken drains the queue, so one pending wake per idle worker is
    // enough; releasing on every post contended on the semaphore's lock (measured: 20% of CPU at 100,000 tasks/s).
    let mutable wakes = 0
    // Bit 0: completed; the rest: twice the posts in flight. As in `Mailbox`: a post racing `Complete` is either
    // refused or seen by the consumers before they stop, never enqueued behind their backs.
    let mutable state = 0

    /// Completed and no post in flight: nothing can be enqueued any more.
    let closed () = Volatile.Read(&state) = 1

    /// Adds an item; false once completed (then the item is never taken).
    member _.Post(item: 'T) =
        let accepted = Interlocked.Add(&state, 2) &&& 1 = 0
        if accepted then queue.Enqueue item
        // A full fence (it replaces the barrier a post needs anyway): the enqueue's last store is visible before
        // `idle` is read, so a consumer that counted itself idle before re-checking the queue is seen here.
        Interlocked.Add(&state, -2) |> ignore
        if accepted && Volatile.Read(&idle) > Volatile.Read(&wakes) then
            Interlocked.Increment(&wakes) |> ignore
            signal.Release()
        accepted

    /// No more items; consumers drain what is left and stop.
    member _.Complete() =
        Interlocked.Or(&state, 1) |> ignore
        signal.Release(max 1 (Volatile.Read(&idle) + 64))

    /// Whether `Complete` was called.
    member _.IsCompleted = Volatile.Read(&state) &&& 1 = 1

    /// Takes an item if there is one.
    member _.TryTake(item: byref<'T>) = queue.TryDequeue(&item)

    /// Blocks until there may be an item (true) or the queue is completed and empty (false). Wake-ups may be
    /// spurious: callers loop on `TryTake`. Every item for which `Post` returned true is taken before all
    /// consumers' `Wait` returns false.
    member _.Wait() : bool =
        if not queue.IsEmpty || spin.SpinFor(fun () -> not queue.IsEmpty) then true
        elif closed () && queue.IsEmpty then false
        else
            Interlocked.Increment(&idle) |> ignore
            // Incremented before the re-check: a Post after it sees `idle > wakes` and releases. Completed with a
            // post in flight does not sleep: the caller comes back at once, and ends once the post has landed.
            if queue.IsEmpty && Volatile.Read(&state) &&& 1 = 0 then
                if signal.Wait(WakeCheck) then Interlocked.Decrement(&wakes) |> ignore
            Interlocked.Decrement(&idle) |> ignore
            not (closed () && queue.IsEmpty)
