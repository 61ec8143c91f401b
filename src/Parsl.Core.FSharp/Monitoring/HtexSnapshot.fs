namespace Parsl.Monitoring

open System
open Parsl.Providers
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput

/// The HTEx's managers and blocks as monitoring rows (pure).
[<RequireQualifiedAccess>]
module HtexSnapshot =
    /// Managers become `node` snapshots (CPU count and memory are this host's for managers on it, unknown
    /// otherwise: the registration does not carry them); blocks become `block` snapshots with Parsl's state names.
    let ofHtex (managers: ManagerInfo list) (blocks: BlockInfo list) =
        let nodes =
            managers
            |> List.map (fun m ->
                { Hostname = m.Hostname
                  Uid = m.ManagerId
                  BlockId = m.BlockId
                  CpuCount = if m.Local then Some Environment.ProcessorCount else None
                  TotalMemory = if m.Local then Some(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes) else None
                  Active = m.Active
                  WorkerCount = m.WorkerCount })
        let blocks =
            blocks
            |> List.map (fun b ->
                { BlockId = b.BlockId
                  JobId = b.JobId
                  Status = if b.ScaledIn then "SCALED_IN" else JobState.name b.Status.State })
        nodes, blocks
