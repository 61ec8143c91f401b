namespace Parsl.Providers

open System
open System.Collections.Generic
open System.Net
open System.Threading
open System.Threading.Tasks
open k8s
open k8s.Models
open Parsl

/// Gets blocks as Kubernetes pods (Parsl's `KubernetesProvider`), through the KubernetesClient package: a pod per
/// block, its phase as the block's state, deletion to cancel. Tested against a fake API server only: no
/// Kubernetes API server installs on Debian.
type KubernetesProvider(options: KubernetesOptions) =
    let gate = new SemaphoreSlim(1, 1)
    let pods = Dictionary<string, string * JobStatus>()
    let mutable client: Kubernetes option = None
    let mutable log: Serilog.ILogger = Serilog.Core.Logger.None

    let api () =
        match client with
        | Some c -> c
        | None ->
            let config =
                match options.ApiServer with
                | Some host ->
                    let c = KubernetesClientConfiguration(Host = host)
                    options.AccessToken |> Option.iter (fun t -> c.AccessToken <- t)
                    c
                | None -> KubernetesClientConfiguration.BuildDefaultConfig()
            let c = new Kubernetes(config)
            client <- Some c
            c

    let locked (f: unit -> Task<'T>) (ct: CancellationToken) =
        task {
            do! gate.WaitAsync ct
            try return! f () finally gate.Release() |> ignore
        }

    let statusOf (p: V1Pod) =
        let phase = if isNull p.Status || isNull p.Status.Phase then "Unknown" else p.Status.Phase
        let terminated =
            if isNull p.Status || isNull p.Status.ContainerStatuses then None
            else
                p.Status.ContainerStatuses
                |> Seq.tryPick (fun c -> if isNull c.State || isNull c.State.Terminated then None else Some c.State.Terminated)
        { State = Kubernetes.state phase
          Message = Some(sprintf "pod phase %s%s" phase (match terminated with Some t when not (isNull t.Reason) -> sprintf " (%s)" t.Reason | _ -> ""))
          ExitCode = terminated |> Option.map (fun t -> t.ExitCode)
          Stdout = None
          Stderr = terminated |> Option.bind (fun t -> Option.ofObj t.Message) }

    /// The options.
    member _.Options = options

    interface IExecutionProvider with
        member _.Label = "kubernetes"
        member _.InitBlocks = options.InitBlocks
        member _.MinBlocks = options.MinBlocks
        member _.MaxBlocks = options.MaxBlocks
        member _.NodesPerBlock = options.NodesPerBlock
        member _.Parallelism = options.Parallelism
        member _.CoresPerNode = None
        member _.MemPerNode = None
        member _.StatusPollingInterval = TimeSpan.FromSeconds 60.0
        member _.WorkerInit = options.WorkerInit
        member _.Launcher = options.Launcher
        member _.Validate() = Kubernetes.validate options
        member _.Initialize ctx = log <- ctx.Log

        member _.SubmitAsync(command, tasksPerNode, jobName, ct) =
            locked (fun () ->
                task {
                    let jobId = Guid.NewGuid().ToString("N").Substring(0, 8)
                    let name = Kubernetes.podName (defaultArg options.PodName jobName) jobId
                    let launch = options.Launcher.Wrap(command, tasksPerNode, options.NodesPerBlock)
                    let pod = Kubernetes.pod options name jobId launch
                    try
                        let! _ = (api ()).CoreV1.CreateNamespacedPodAsync(pod, options.Namespace, cancellationToken = ct)
                        ()
                    with :? k8s.Autorest.HttpOperationException as e ->
                        raise (SubmitException(jobName, sprintf "the API server refused pod %s: %s" name e.Message,
                                               Some(int e.Response.StatusCode), "", e.Response.Content))
                    pods[jobId] <- (name, JobStatus.ofState JobState.Pending)
                    log.Information("kubernetes: created pod {Pod} in {Namespace} for {JobName}", name, options.Namespace, jobName)
                    return jobId
                }) ct

        member _.StatusAsync(ids, ct) =
            locked (fun () ->
                task {
                    for id in ids do
                        match pods.TryGetValue id with
                        | true, (name, st) when not (JobState.isTerminal st.State) ->
                            try
                                let! p = (api ()).CoreV1.ReadNamespacedPodAsync(name, options.Namespace, cancellationToken = ct)
                                pods[id] <- (name, statusOf p)
                            with :? k8s.Autorest.HttpOperationException as e when e.Response.StatusCode = HttpStatusCode.NotFound ->
                                // Parsl: a pod that vanished while running is UNKNOWN.
                                pods[id] <- (name, { JobStatus.ofState JobState.Unknown with Message = Some(sprintf "pod %s not found" name) })
                        | _ -> ()
                    return
                        ids |> List.map (fun id ->
                            match pods.TryGetValue id with
                            | true, (_, st) -> st
                            | _ -> { JobStatus.ofState JobState.Unknown with Message = Some(sprintf "job %s was not submitted by this provider" id) })
                }) ct

        member _.CancelAsync(ids, ct) =
            locked (fun () ->
                task {
                    let results = ResizeArray()
                    for id in ids do
                        match pods.TryGetValue id with
                        | true, (name, _) ->
                            try
                                let! _ = (api ()).CoreV1.DeleteNamespacedPodAsync(name, options.Namespace, cancellationToken = ct)
                                pods[id] <- (name, JobStatus.ofState JobState.Cancelled)
                                results.Add true
                            with :? k8s.Autorest.HttpOperationException as e when e.Response.StatusCode = HttpStatusCode.NotFound ->
                                pods[id] <- (name, JobStatus.ofState JobState.Cancelled)
                                results.Add true
                        | _ -> results.Add false
                    return List.ofSeq results
                }) ct

    interface IDisposable with
        member _.Dispose() =
            client |> Option.iter (fun c -> c.Dispose())
            client <- None
