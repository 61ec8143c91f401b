namespace Parsl

open System

/// Monitoring (Parsl's `MonitoringHub`): the SQLite database with Parsl's tables, task-state events and live
/// counts, the dashboard and the terminal progress display. Build it from `MonitoringConfig.defaults`.
type MonitoringConfig =
    { /// The database file. Default None: `monitoring.db` in `Config.RunDir` (Parsl's `runinfo/monitoring.db`),
      /// shared by every run under that directory.
      Database: string option
      /// Write the database. Default true; false keeps events, counts, spans and the dashboard's live view only.
      WriteDatabase: bool
      /// The workflow's name (Parsl's `workflow_name`). Default None: the entry assembly's name.
      WorkflowName: string option
      /// The workflow's version (Parsl's `workflow_version`). Default None: the start time.
      WorkflowVersion: string option
      /// Sample each try's process tree on HTEx workers (Parsl's `resource_monitoring_enabled`). Default true.
      /// The thread pool records no resource rows, as in Parsl.
      ResourceMonitoringEnabled: bool
      /// How often tries' processes are sampled (Parsl's `resource_monitoring_interval`). Default 30 s;
      /// zero records only the first and the last sample of each try.
      ResourceMonitoringInterval: TimeSpan
      /// How often connected managers (`node` rows) and blocks (`block` rows) are polled. Default 1 s.
      ExecutorPollInterval: TimeSpan
      /// Start the live dashboard (needs the Parsl.Dashboard package) and print its address. Default false.
      Dashboard: bool
      /// The dashboard's address. Default 127.0.0.1; any other address needs `DashboardToken`.
      DashboardAddress: string
      /// The dashboard's port. Default 0: a free port, printed at start.
      DashboardPort: int
      /// A secret every request must carry (`?token=` or the `X-Parsl-Token` header). Default None; required
      /// when `DashboardAddress` is not a loopback address.
      DashboardToken: string option
      /// Show counts by state and a rate in the terminal while tasks run. Silent when the output is not a
      /// terminal. Default false.
      Progress: bool
      /// Internal, for tests: the database's page limit (SQLite's `max_page_count`), to make it fill up.
      MaxPageCount: int option }

/// Functions over monitoring options.
[<RequireQualifiedAccess>]
module MonitoringConfig =
    /// Parsl's defaults, with the database in the run directory.
    let defaults =
        { Database = None
          WriteDatabase = true
          WorkflowName = None
          WorkflowVersion = None
          ResourceMonitoringEnabled = true
          ResourceMonitoringInterval = TimeSpan.FromSeconds 30.0
          ExecutorPollInterval = TimeSpan.FromSeconds 1.0
          Dashboard = false
          DashboardAddress = "127.0.0.1"
          DashboardPort = 0
          DashboardToken = None
          Progress = false
          MaxPageCount = None }

    /// Whether an address names only this machine.
    let isLoopback (address: string) =
        match address with
        | "localhost" -> true
        | a ->
            match Net.IPAddress.TryParse a with
            | true, ip -> Net.IPAddress.IsLoopback ip
            | _ -> false

    /// Every problem with the options, each naming its field and the fix.
    let validate (m: MonitoringConfig) : ConfigurationError list =
        [ match m.Database with
          | Some p when isNull p || p.Trim() = "" ->
              ConfigurationError("MonitoringConfig.Database", "is empty; give a file path, or None for monitoring.db in the run directory")
          | _ -> ()
          if m.ResourceMonitoringInterval < TimeSpan.Zero then
              ConfigurationError(
                  "MonitoringConfig.ResourceMonitoringInterval",
                  sprintf "must be zero (first and last samples only) or positive (got %O)" m.ResourceMonitoringInterval)
          if m.ExecutorPollInterval <= TimeSpan.Zero then
              ConfigurationError(
                  "MonitoringConfig.ExecutorPollInterval",
                  sprintf "must be positive (got %O); the default is 1 second" m.ExecutorPollInterval)
          if m.DashboardPort < 0 || m.DashboardPort > 65535 then
              ConfigurationError(
                  "MonitoringConfig.DashboardPort",
                  sprintf "must be 0 (a free port) or a port number up to 65535 (got %d)" m.DashboardPort)
          if isNull m.DashboardAddress || m.DashboardAddress.Trim() = "" then
              ConfigurationError("MonitoringConfig.DashboardAddress", "is empty; the default is 127.0.0.1")
          elif not (isLoopback m.DashboardAddress) then
              match m.DashboardToken with
              | Some t when not (isNull t) && t.Length >= 16 -> ()
              | _ ->
                  ConfigurationError(
                      "MonitoringConfig.DashboardToken",
                      sprintf "is required (16 characters or more) when DashboardAddress is %s, which is not a loopback address; set a token or use 127.0.0.1"
                          m.DashboardAddress)
          match m.MaxPageCount with
          | Some n when n <= 0 -> ConfigurationError("MonitoringConfig.MaxPageCount", "must be positive")
          | _ -> () ]
