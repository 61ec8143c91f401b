namespace Parsl.Executors.HighThroughput

open System
open Parsl
open Parsl.Jobs
open Parsl.Providers
open Parsl.Node.HighThroughput

/// The options of a `HighThroughputExecutor`, with Parsl's names and defaults (`HtexOptions.defaults ()`).
/// Build them from the defaults with `{ HtexOptions.defaults () with MaxWorkersPerNode = Some 4 }`.
type HtexOptions =
    { /// Default "HighThroughputExecutor".
      Label: string
      /// Where blocks come from. Default: a `LocalProvider` with Parsl's defaults.
      Provider: IExecutionProvider
      /// The address managers connect to; the interchange binds it. Default "127.0.0.1".
      Address: string
      /// A fixed port for managers; None picks one from `WorkerPortRange`. Default None.
      WorkerPort: int option
      /// Ports to choose from (inclusive lower, exclusive upper). Default (54000, 55000).
      WorkerPortRange: int * int
      /// How many ROUTER sockets (one port each) the interchange spreads managers over TCP across; each manager
      /// connects to one, picked from its id. With one socket NetMQ scans every connected manager's pipe for each
      /// message from one that had gone quiet, so at thousands of managers dispatch slows down; K sockets divide that
      /// scan by K. The first socket listens on `WorkerPort` (or a port from `WorkerPortRange`), the others on ports
      /// from `WorkerPortRange`. Default None: one socket per 1,000 managers the provider may start (`MaxBlocks` x
      /// `NodesPerBlock`, rounded up), from 1 to 32. Some k: exactly k (1 to 64).
      InterchangeSockets: int option
      /// Worker processes per node at most; None = as many as cores allow. Default None.
      MaxWorkersPerNode: int option
      /// Cores each worker needs (below 1 oversubscribes). Default 1.0.
      CoresPerWorker: float
      /// Memory each worker needs, in GB. Default None (no bound).
      MemPerWorker: float option
      /// Tasks queued per manager beyond its free workers. Default 0.
      PrefetchCapacity: int
      /// How often managers heartbeat. Default 30 s.
      HeartbeatPeriod: TimeSpan
      /// A manager silent this long is lost (its tasks fail with `ManagerLost`); a manager that hears nothing
      /// from the interchange this long exits. Default 120 s.
      HeartbeatThreshold: TimeSpan
      /// Managers drain (take no new tasks, exit when idle) this long after they start. Default None (never).
      DrainPeriod: TimeSpan option
      /// How long the interchange waits for socket activity before housekeeping. Default 10 ms.
      PollPeriod: TimeSpan
      /// CurveZMQ encryption of every manager connection over TCP. Default true.
      Encrypted: bool
      /// Managers on the client's own host connect over a local (Unix) socket instead of TCP: a message reaches the
      /// other process without NetMQ's I/O threads, so a task's round trip is about a third as long. Only processes of
      /// the same user that present the client's key (when `Encrypted`) are accepted, and the bytes never leave
      /// the kernel. Managers on other hosts use TCP as always. Default true; false sends every manager over TCP.
      SameHostSocket: bool
      /// Default `RandomSelector`.
      ManagerSelector: ManagerSelector
      /// Accelerator names, one per worker (`CUDA_VISIBLE_DEVICES` and friends). Default [].
      AvailableAccelerators: string list
      /// "none", "block", "block-reverse", "alternating" or "list:0-1,4:2-3". Default "none".
      CpuAffinity: string
      /// When failing blocks put the executor in a bad state, failing every task with `BadStateException`
      /// (Parsl's `block_error_handler`). Default `BlockErrorHandler.Simple` (all blocks failed, Parsl's `True`);
      /// `Windowed n`: the newest n blocks failed; `Off`: never.
      BlockErrorHandler: BlockErrorHandler
      /// Default `Simple` (Parsl's `Config.strategy = 'simple'`).
      Strategy: StrategyKind
      /// How often the strategy runs. Default 5 s.
      StrategyPeriod: TimeSpan
      /// Blocks idle this long may be scaled in. Default 120 s.
      MaxIdleTime: TimeSpan
      /// The command that starts a manager, as a list of words (program first). Default: `dotnet
      /// <dir>/Parsl.Workers.dll` where dir is the application's directory (reference the Parsl.Workers package
      /// or project so that it is copied there); in a script (`#r "nuget: Parsl.Workers"`), the package's worker.
      WorkerCommand: string list option
      /// DANGEROUS: lets any peer that reaches the interchange's port register as a manager, receive tasks (their
      /// code and arguments) and send results, without proving it holds the run's secret. Only for networks where
      /// nobody else can reach the port. With `Encrypted` the traffic is still encrypted, but CURVE alone checks no
      /// client key. Default false: every manager proves the secret by challenge and response, encrypted or not.
      AllowUnauthenticatedManagers: bool
      /// The largest message (bytes) a manager may send the interchange: NetMQ refuses a longer frame before it
      /// allocates for it, so a stranger cannot make the client allocate more than this. A result batch that would
      /// be longer is split by the manager, and a single result longer than this fails its task with
      /// `SerializationError` naming this option. Default 128 MiB.
      MaxMessageSize: int }

/// Functions over HTEx options.
[<RequireQualifiedAccess>]
module HtexOptions =
    /// Parsl's defaults. A function, not a value: each call makes a new `LocalProvider`, because a provider
    /// keeps the blocks it started and must not be shared by two executors.
    let defaults () =
        { Label = "HighThroughputExecutor"
          Provider = LocalProvider()
          Address = "127.0.0.1"
          WorkerPort = None
          WorkerPortRange = (54000, 55000)
          InterchangeSockets = None
          MaxWorkersPerNode = None
          CoresPerWorker = 1.0
          MemPerWorker = None
          PrefetchCapacity = 0
          HeartbeatPeriod = TimeSpan.FromSeconds 30.0
          HeartbeatThreshold = TimeSpan.FromSeconds 120.0
          DrainPeriod = None
          PollPeriod = TimeSpan.FromMilliseconds 10.0
          Encrypted = true
          SameHostSocket = true
          ManagerSelector = RandomSelector
          AvailableAccelerators = []
          CpuAffinity = "none"
          BlockErrorHandler = BlockErrorHandler.Simple
          Strategy = Simple
          StrategyPeriod = TimeSpan.FromSeconds 5.0
          MaxIdleTime = TimeSpan.FromSeconds 120.0
          WorkerCommand = None
          AllowUnauthenticatedManagers = false
          MaxMessageSize = 128 * 1024 * 1024 }

    /// Whether the interchange can bind `address`: an IP address, "*", or a host name that resolves to an IPv4 address.
    let addressUsable (address: string) =
        match Net.IPAddress.TryParse address with
        | true, _ -> true
        | _ when address = "*" -> true
        | _ ->
            Uri.CheckHostName address = UriHostNameType.Dns
            && (try Net.Dns.GetHostAddresses address |> Array.exists (fun a -> a.AddressFamily = Net.Sockets.AddressFamily.InterNetwork) with _ -> false)

    /// Where the default worker command looks for `Parsl.Workers.dll`.
    let defaultWorkerDll () = IO.Path.Combine(AppContext.BaseDirectory, "Parsl.Workers.dll")

    /// The most ROUTER sockets an interchange may be asked for.
    let maxSockets = 64

    /// How many sockets the interchange listens on: `InterchangeSockets`, or one per 1,000 managers the provider may
    /// start (at 3,000 managers on one socket dispatch kept its one-manager rate; at 10,000 it fell to a third).
    let interchangeSockets (o: HtexOptions) =
        match o.InterchangeSockets with
        | Some k -> k
        | None ->
            let managers = int64 (max 0 o.Provider.MaxBlocks) * int64 (max 1 o.Provider.NodesPerBlock)
            let lo, hi = o.WorkerPortRange
            int ((managers + 999L) / 1000L) |> max 1 |> min 32 |> min (max 1 (hi - lo))

    /// Every problem, each naming its field and the fix.
    let validate (o: HtexOptions) : ConfigurationError list =
        let f name = sprintf "HighThroughputExecutor.%s" name
        [ if String.IsNullOrWhiteSpace o.Label then ConfigurationError(f "Label", "is empty; the default is \"HighThroughputExecutor\"")
          if isNull (box o.Provider) then ConfigurationError(f "Provider", "is null; use LocalProvider() or another provider")
          else yield! o.Provider.Validate()
          if String.IsNullOrWhiteSpace o.Address then ConfigurationError(f "Address", "is empty; the default is \"127.0.0.1\"")
          elif not (addressUsable o.Address) then
              ConfigurationError(
                  f "Address",
                  sprintf "'%s' is neither an IP address nor a host name this machine resolves; give the address managers connect to, such as \"127.0.0.1\" or this node's name on the cluster network" o.Address)
          let lo, hi = o.WorkerPortRange
          if lo < 1 || hi > 65536 || lo >= hi then
              ConfigurationError(f "WorkerPortRange", sprintf "(%d, %d) is not a port range; give (low, high) with 1 <= low < high <= 65536" lo hi)
          match o.WorkerPort with
          | Some p when p < 1 || p > 65535 -> ConfigurationError(f "WorkerPort", sprintf "%d is not a port (1-65535); or None to pick one" p)
          | _ -> ()
          match o.InterchangeSockets with
          | Some k when k < 1 || k > maxSockets ->
              ConfigurationError(f "InterchangeSockets", sprintf "must be from 1 to %d (got %d), or None for one per 1,000 managers the provider may start" maxSockets k)
          | Some k when lo >= 1 && lo < hi && k > hi - lo ->
              ConfigurationError(f "InterchangeSockets", sprintf "%d sockets need %d ports but WorkerPortRange (%d, %d) has %d; widen the range or use fewer sockets" k k lo hi (hi - lo))
          | _ -> ()
          match o.MaxWorkersPerNode with
          | Some n when n < 1 -> ConfigurationError(f "MaxWorkersPerNode", sprintf "must be at least 1 (got %d), or None for as many as cores allow" n)
          | _ -> ()
          if not (o.CoresPerWorker > 0.0) then
              ConfigurationError(f "CoresPerWorker", sprintf "must be positive (got %g); the default is 1.0" o.CoresPerWorker)
          match o.MemPerWorker with
          | Some m when not (m > 0.0) -> ConfigurationError(f "MemPerWorker", sprintf "must be positive GB (got %g), or None" m)
          | _ -> ()
          if o.PrefetchCapacity < 0 then
              ConfigurationError(f "PrefetchCapacity", sprintf "must be 0 or more (got %d)" o.PrefetchCapacity)
          if o.HeartbeatPeriod <= TimeSpan.Zero then ConfigurationError(f "HeartbeatPeriod", "must be positive; the default is 30 s")
          if o.HeartbeatThreshold <= o.HeartbeatPeriod then
              ConfigurationError(
                  f "HeartbeatThreshold",
                  sprintf "(%O) must be longer than HeartbeatPeriod (%O), or every manager would be declared lost" o.HeartbeatThreshold o.HeartbeatPeriod)
          match o.DrainPeriod with
          | Some d when d <= TimeSpan.Zero -> ConfigurationError(f "DrainPeriod", "must be positive, or None for never")
          | _ -> ()
          if o.PollPeriod <= TimeSpan.Zero then ConfigurationError(f "PollPeriod", "must be positive; the default is 10 ms")
          match Policies.parseAffinity o.CpuAffinity with
          | Error e -> ConfigurationError(f "CpuAffinity", e)
          | Ok _ -> ()
          if o.AvailableAccelerators |> List.exists (fun a -> String.IsNullOrWhiteSpace a || a.Contains ',') then
              ConfigurationError(f "AvailableAccelerators", "names must be non-empty and contain no comma")
          yield! ErrorHandlers.validate "HighThroughputExecutor" o.BlockErrorHandler
          if o.StrategyPeriod <= TimeSpan.Zero then ConfigurationError(f "StrategyPeriod", "must be positive; the default is 5 s")
          if o.MaxIdleTime < TimeSpan.Zero then ConfigurationError(f "MaxIdleTime", "must be 0 or more; the default is 120 s")
          if o.MaxMessageSize < 64 * 1024 then
              ConfigurationError(f "MaxMessageSize", sprintf "must be at least 65536 bytes (got %d); the default is 134217728 (128 MiB)" o.MaxMessageSize)
          match o.WorkerCommand with
          | Some [] -> ConfigurationError(f "WorkerCommand", "is empty; give the program and its arguments, or None for the default")
          | None ->
              match WorkerLocator.defaultCommand () with
              | Error fix -> ConfigurationError(f "WorkerCommand", fix)
              | Ok _ -> ()
          | _ -> () ]

    /// Workers per node as the client estimates it (Parsl's `workers_per_node`), for the strategy.
    let workersPerNode (o: HtexOptions) =
        let known =
            [ match o.MaxWorkersPerNode with Some n -> float n | None -> ()
              match o.Provider.CoresPerNode with Some c -> floor (float c / o.CoresPerWorker) | None -> ()
              match o.Provider.MemPerNode, o.MemPerWorker with
              | Some m, Some w -> floor (m / w)
              | _ -> ()
              if not o.AvailableAccelerators.IsEmpty then float o.AvailableAccelerators.Length ]
        match known with
        | [] -> 1
        | xs -> max 1 (int (List.min xs))
