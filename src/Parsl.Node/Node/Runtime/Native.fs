namespace Parsl.Node.Runtime

#nowarn "9" // native pointers: the glibc calls below take and fill raw memory.

open System
open System.Runtime.InteropServices
open System.Text
open Microsoft.FSharp.NativeInterop

/// glibc's process calls for the shell runner. `posix_spawn` (vfork-style) instead of `Process.Start`, because a
/// shell app needs its own process group and default signal dispositions, and because going through `setsid`
/// or `Process` costs a large share of the spawn rate. Everything here is blittable: strings are encoded by hand.
module internal Native =
    // "libc" is mapped by the .NET runtime to the C library's real soname (libc.so.6 on glibc).
    [<Literal>]
    let private Libc = "libc"

    [<DllImport(Libc)>]
    extern int posix_spawn(int& pid, nativeint path, nativeint fileActions, nativeint attr, nativeint argv, nativeint envp)

    [<DllImport(Libc)>]
    extern int posix_spawnattr_init(nativeint attr)

    [<DllImport(Libc)>]
    extern int posix_spawnattr_destroy(nativeint attr)

    [<DllImport(Libc)>]
    extern int posix_spawnattr_setflags(nativeint attr, int16 flags)

    [<DllImport(Libc)>]
    extern int posix_spawnattr_setpgroup(nativeint attr, int pgroup)

    [<DllImport(Libc)>]
    extern int posix_spawnattr_setsigdefault(nativeint attr, nativeint sigset)

    [<DllImport(Libc)>]
    extern int posix_spawnattr_setsigmask(nativeint attr, nativeint sigset)

    [<DllImport(Libc)>]
    extern int posix_spawn_file_actions_init(nativeint fileActions)

    [<DllImport(Libc)>]
    extern int posix_spawn_file_actions_destroy(nativeint fileActions)

    [<DllImport(Libc)>]
    extern int posix_spawn_file_actions_addopen(nativeint fileActions, int fd, nativeint path, int oflag, int mode)

    [<DllImport(Libc)>]
    extern int posix_spawn_file_actions_adddup2(nativeint fileActions, int fd, int newfd)

    [<DllImport(Libc)>]
    extern int sigemptyset(nativeint set)

    [<DllImport(Libc)>]
    extern int sigaddset(nativeint set, int signum)

    [<DllImport(Libc, SetLastError = true)>]
    extern int waitid(int idtype, int id, nativeint info, int options)

    [<DllImport(Libc, SetLastError = true)>]
    extern int waitpid(int pid, int& status, int options)

    [<DllImport(Libc, SetLastError = true)>]
    extern int kill(int pid, int signal)

    [<DllImport(Libc, SetLastError = true)>]
    extern int pidfd_open(int pid, uint32 flags)

    [<DllImport(Libc, SetLastError = true)>]
    extern int poll(nativeint fds, unativeint nfds, int timeout)

    [<DllImport(Libc)>]
    extern int close(int fd)

    // prctl is variadic in C; its integer arguments are passed as for a fixed signature on Linux's ABIs.
    [<DllImport(Libc, SetLastError = true)>]
    extern int prctl(int option, unativeint arg2, unativeint arg3, unativeint arg4, unativeint arg5)

    let private POSIX_SPAWN_SETPGROUP = 0x02s
    let private POSIX_SPAWN_SETSIGDEF = 0x04s
    let private POSIX_SPAWN_SETSIGMASK = 0x08s
    let private O_WRONLY = 0x1
    let private O_CREAT = 0x40
    let private O_APPEND = 0x400
    let private EINTR = 4
    let private P_PID = 1
    let private WEXITED = 4
    let private WNOWAIT = 0x01000000
    let private WNOHANG = 1
    let private ECHILD = 10
    let private PR_SET_CHILD_SUBREAPER = 36
    let private SIGKILL = 9
    let private SIGSTOP = 19
    let private POLLIN = 1s
    let private POLLRDHUP = 0x2000s

    // glibc's posix_spawnattr_t is 336 bytes, posix_spawn_file_actions_t 80 and sigset_t 128, siginfo_t 128:
    // allocating more costs nothing and survives a layout change.
    let private opaqueSize = 1024un

    let private alloc () = NativePtr.toNativeInt (NativePtr.ofVoidPtr<byte> (NativeMemory.AllocZeroed opaqueSize))

    let private free (p: nativeint) =
        if p <> 0n then NativeMemory.Free(NativePtr.toVoidPtr (NativePtr.ofNativeInt<byte> p))

    /// One allocation holding a null-terminated array of pointers followed by the NUL-terminated UTF-8 strings
    /// they point to (an `argv` or `envp`). Free it with `freeBlock`.
    let stringArray (items: string[]) : nativeint =
        let header = (items.Length + 1) * IntPtr.Size
        let lengths = items |> Array.map (fun s -> Encoding.UTF8.GetByteCount s + 1)
        let block =
            NativePtr.toNativeInt (NativePtr.ofVoidPtr<byte> (NativeMemory.Alloc(unativeint (header + Array.sum lengths))))
        let mutable offset = header
        for i in 0 .. items.Length - 1 do
            let dest = Span<byte>(NativePtr.toVoidPtr (NativePtr.ofNativeInt<byte> (block + nativeint offset)), lengths[i])
            let n = Encoding.UTF8.GetBytes(items[i].AsSpan(), dest)
            dest[n] <- 0uy
            Marshal.WriteIntPtr(block, i * IntPtr.Size, block + nativeint offset)
            offset <- offset + lengths[i]
        Marshal.WriteIntPtr(block, items.Length * IntPtr.Size, 0n)
        block

    /// Frees a block from `stringArray`.
    let freeBlock (block: nativeint) = free block

    /// Starts `argv[0]` with `argv` and `envp` in a new process group whose id is the child's pid, with every
    /// catchable signal at its default action (.NET ignores SIGPIPE, and an ignored signal survives exec) and
    /// nothing blocked. `stdoutPath`/`stderrPath` (null: inherit) are opened for appending in the child; the
    /// same path for both shares one open file. Returns the pid, or the error number.
    let spawn (argv: string[]) (envp: string[]) (stdoutPath: string) (stderrPath: string) : Result<int, int> =
        let attr = alloc ()
        let actions = alloc ()
        let signals = alloc ()
        let argvBlock = stringArray argv
        let envBlock = stringArray envp
        let paths = stringArray [| (if isNull stdoutPath then "" else stdoutPath); (if isNull stderrPath then "" else stderrPath) |]
        let mutable attrReady = false
        let mutable actionsReady = false
        try
            let mutable rc = posix_spawnattr_init attr
            attrReady <- rc = 0
            if rc = 0 then
                rc <- posix_spawnattr_setflags (attr, POSIX_SPAWN_SETPGROUP ||| POSIX_SPAWN_SETSIGDEF ||| POSIX_SPAWN_SETSIGMASK)
            if rc = 0 then rc <- posix_spawnattr_setpgroup (attr, 0)
            if rc = 0 then rc <- sigemptyset signals
            for s in 1..31 do
                if rc = 0 && s <> SIGKILL && s <> SIGSTOP then rc <- sigaddset (signals, s)
            if rc = 0 then rc <- posix_spawnattr_setsigdefault (attr, signals)
            if rc = 0 then rc <- sigemptyset signals
            if rc = 0 then rc <- posix_spawnattr_setsigmask (attr, signals)
            if rc = 0 then
                rc <- posix_spawn_file_actions_init actions
                actionsReady <- rc = 0
            let flags = O_WRONLY ||| O_CREAT ||| O_APPEND
            if rc = 0 && not (isNull stdoutPath) then
                rc <- posix_spawn_file_actions_addopen (actions, 1, Marshal.ReadIntPtr(paths, 0), flags, 0o600)
            if rc = 0 && not (isNull stderrPath) then
                rc <-
                    if stderrPath = stdoutPath then posix_spawn_file_actions_adddup2 (actions, 1, 2)
                    else posix_spawn_file_actions_addopen (actions, 2, Marshal.ReadIntPtr(paths, IntPtr.Size), flags, 0o600)
            let mutable pid = 0
            if rc = 0 then rc <- posix_spawn (&pid, Marshal.ReadIntPtr(argvBlock, 0), actions, attr, argvBlock, envBlock)
            if rc = 0 then Ok pid else Error rc
        finally
            if actionsReady then posix_spawn_file_actions_destroy actions |> ignore
            if attrReady then posix_spawnattr_destroy attr |> ignore
            free paths
            free envBlock
            free argvBlock
            free signals
            free actions
            free attr

    /// Blocks until child `pid` has exited, without reaping it: while it is a zombie its pid and process group id
    /// cannot be reused, so killing the group stays safe until `reap`. Returns 0 or the error number.
    let waitExited (pid: int) : int =
        let info = alloc ()
        try
            let mutable result = -1
            let mutable errno = EINTR
            while result <> 0 && errno = EINTR do
                result <- waitid (P_PID, pid, info, WEXITED ||| WNOWAIT)
                errno <- if result = 0 then 0 else Marshal.GetLastPInvokeError()
            errno
        finally
            free info

    /// How a bounded wait for a child ended.
    type TimedWait =
        /// The child has exited (it is not reaped yet).
        | Exited
        /// The time ran out first.
        | TimedOut
        /// This system cannot wait with a limit (no `pidfd_open`: Linux before 5.3, glibc before 2.36).
        | Unsupported

    /// Waits at most `limit` for child `pid` to exit, without reaping it, on the calling thread (a pidfd polled
    /// with a timeout), so that the limit holds however busy the thread pool is.
    let waitExitedFor (pid: int) (limit: TimeSpan) : TimedWait =
        let fd =
            try
                pidfd_open (pid, 0u)
            with :? EntryPointNotFoundException ->
                -1
        if fd < 0 then
            Unsupported
        else
            // struct pollfd { int fd; short events; short revents; }
            let pollfd = NativePtr.stackalloc<int64> 1
            try
                NativePtr.write (NativePtr.ofNativeInt<int> (NativePtr.toNativeInt pollfd)) fd
                let deadline = Diagnostics.Stopwatch.GetTimestamp() + int64 (limit.TotalSeconds * float Diagnostics.Stopwatch.Frequency)
                let mutable outcome = None
                while outcome.IsNone do
                    let left = Diagnostics.Stopwatch.GetElapsedTime(Diagnostics.Stopwatch.GetTimestamp(), deadline)
                    if left <= TimeSpan.Zero then
                        outcome <- Some TimedOut
                    else
                        let address = NativePtr.toNativeInt pollfd
                        Marshal.WriteInt16(address, 4, POLLIN)
                        Marshal.WriteInt16(address, 6, 0s)
                        // Rounded up, so that the deadline has passed when poll times out; capped to poll's int.
                        let ms = int (min (Math.Ceiling left.TotalMilliseconds) (float Int32.MaxValue))
                        let ready = poll (address, 1un, ms)
                        if ready > 0 then outcome <- Some Exited
                        elif ready < 0 && Marshal.GetLastPInvokeError() <> EINTR then outcome <- Some Unsupported
                outcome.Value
            finally
                close fd |> ignore

    /// Blocks the calling thread until the peer of socket `fd` has hung up (shut down its sending side, or its process
    /// has ended), whether or not unread data is left; returns at once on an error (a bad descriptor, say).
    let waitHangUp (fd: int) =
        // struct pollfd { int fd; short events; short revents; }: POLLHUP and POLLERR are reported unasked.
        let pollfd = NativePtr.stackalloc<int64> 1
        let address = NativePtr.toNativeInt pollfd
        let mutable go = true
        while go do
            Marshal.WriteInt32(address, 0, fd)
            Marshal.WriteInt16(address, 4, POLLRDHUP)
            Marshal.WriteInt16(address, 6, 0s)
            let ready = poll (address, 1un, -1)
            go <- ready = 0 || (ready < 0 && Marshal.GetLastPInvokeError() = EINTR)

    /// Reaps child `pid` (blocking until it exits). Returns its wait status, or the error number.
    let reap (pid: int) : Result<int, int> =
        let mutable status = 0
        let mutable result = -1
        let mutable errno = EINTR
        while result < 0 && errno = EINTR do
            result <- waitpid (pid, &status, 0)
            errno <- if result >= 0 then 0 else Marshal.GetLastPInvokeError()
        if result >= 0 then Ok status else Error errno

    /// A wait status as Python's `Popen.returncode`: the exit code, or minus the signal that killed the process.
    let exitCode (status: int) =
        let signal = status &&& 0x7f
        if signal = 0 then (status >>> 8) &&& 0xff else -signal

    /// One row of the process table.
    [<Struct>]
    type ProcessRow =
        { Pid: int
          Parent: int
          Group: int
          /// The state letter of /proc/PID/stat (`Z`: a zombie, exited and not yet reaped).
          State: char }

    /// Every process, from /proc; empty where there is no /proc.
    let processTable () : ProcessRow list =
        try
            IO.Directory.EnumerateDirectories "/proc"
            |> Seq.choose (fun d ->
                let name = IO.Path.GetFileName d
                if name.Length = 0 || not (Char.IsDigit name[0]) then None
                else
                    try
                        let stat = IO.File.ReadAllText(IO.Path.Combine(d, "stat"))
                        // After the command (which may hold spaces and parentheses): state, ppid, pgrp.
                        let rest = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
                        Some { Pid = int name; Parent = int rest[1]; Group = int rest[2]; State = rest[0][0] }
                    with _ -> None)
            |> List.ofSeq
        with _ -> []

    /// Kills the processes `seed` picks and every process they started, even those that left their group: MPI
    /// launchers put each rank in a group or session of its own (Open MPI's `mpiexec` and MPICH's Hydra both do), where
    /// a group kill does not reach. The descendants are found through /proc before anything is killed (after, they
    /// would be reparented and untraceable), and once more after, for any started meanwhile. Nothing is stopped first:
    /// a killer that is itself killed half-way must not leave processes stopped for good. Never this process.
    let private killPicked (seed: ProcessRow -> bool) (group: int) =
        let found = Collections.Generic.HashSet<int>()
        let collect () =
            let table = processTable ()
            let mutable more = true
            while more do
                more <- false
                for row in table do
                    if row.Pid <> Environment.ProcessId && not (found.Contains row.Pid) && (seed row || found.Contains row.Parent) then
                        found.Add row.Pid |> ignore
                        more <- true
        collect ()
        if group > 0 then kill (-group, SIGKILL) |> ignore
        for pid in found do
            kill (pid, SIGKILL) |> ignore
        let before = found.Count
        collect ()
        if found.Count > before then
            for pid in found do
                kill (pid, SIGKILL) |> ignore

    /// Kills a process group and every process its members started (see `killPicked`).
    let killGroup (pgid: int) = killPicked (fun row -> row.Group = pgid) pgid

    /// Kills process `pid`, the group it leads (if it leads one) and every process they started.
    let killTree (pid: int) =
        // While `pid` lives no other process can own a group of that id, so the group kill reaches its own or none.
        killPicked (fun row -> row.Pid = pid || row.Group = pid) pid

    /// Kills every process this one started, and everything they started (see `killPicked`).
    let killDescendants () = killPicked (fun row -> row.Parent = Environment.ProcessId) 0

    /// Makes this process its descendants' reaper of last resort (Linux's child subreaper): a process whose parent dies
    /// is re-parented to the nearest living subreaper among its ancestors instead of to init, so it stays in reach of
    /// this process's kills. Returns false where the system has no subreapers (Linux before 3.4, other systems).
    let becomeSubreaper () =
        try
            OperatingSystem.IsLinux() && prctl (PR_SET_CHILD_SUBREAPER, 1un, 0un, 0un, 0un) = 0
        with :? EntryPointNotFoundException ->
            false

    /// The environment a process was started with (`NAME=value` entries, from /proc/PID/environ); empty when it cannot
    /// be read (gone, a zombie, another user's).
    let environmentOf (pid: int) : string[] =
        try
            (IO.File.ReadAllText(sprintf "/proc/%d/environ" pid)).Split('\000', StringSplitOptions.RemoveEmptyEntries)
        with _ -> [||]

    /// Reaps child `pid` if it has exited, without waiting. True when it was reaped (or is not a child any more).
    let reapIfExited (pid: int) =
        let mutable status = 0
        let mutable result = -1
        let mutable errno = EINTR
        while result < 0 && errno = EINTR do
            result <- waitpid (pid, &status, WNOHANG)
            errno <- if result >= 0 then 0 else Marshal.GetLastPInvokeError()
        result = pid || errno = ECHILD

    /// Sends `signal` to this process (to end it as a signal it caught would have, once its handlers are gone).
    let signalSelf (signal: int) = kill (Environment.ProcessId, signal) |> ignore
