namespace Parsl.Monitoring

open System
open Parsl

/// Builds monitoring settings from plain values, for the C# façade (which cannot write F# options).
[<Sealed>]
type internal MonitoringParts private () =
    /// The configuration with monitoring on, set from plain values (null = default).
    static member With
        (
            config: Config,
            database: string,
            writeDatabase: bool,
            workflowName: string,
            workflowVersion: string,
            resourceMonitoringEnabled: bool,
            resourceMonitoringInterval: TimeSpan,
            executorPollInterval: TimeSpan,
            dashboard: bool,
            dashboardAddress: string,
            dashboardPort: int,
            dashboardToken: string,
            progress: bool
        ) =
        { config with
            Monitoring =
                Some
                    { MonitoringConfig.defaults with
                        Database = Option.ofObj database
                        WriteDatabase = writeDatabase
                        WorkflowName = Option.ofObj workflowName
                        WorkflowVersion = Option.ofObj workflowVersion
                        ResourceMonitoringEnabled = resourceMonitoringEnabled
                        ResourceMonitoringInterval = resourceMonitoringInterval
                        ExecutorPollInterval = executorPollInterval
                        Dashboard = dashboard
                        DashboardAddress = dashboardAddress
                        DashboardPort = dashboardPort
                        DashboardToken = Option.ofObj dashboardToken
                        Progress = progress } }

    /// The kernel's monitoring handle, or null when monitoring is off.
    static member Handle(dfk: DataFlowKernel) = Option.toObj dfk.Monitoring
