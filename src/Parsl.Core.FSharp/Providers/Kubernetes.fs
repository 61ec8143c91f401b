namespace Parsl.Providers

open System
open System.Collections.Generic
open System.Text.RegularExpressions
open k8s.Models
open Parsl

/// Options of the Kubernetes provider (Parsl's `KubernetesProvider`): each block is one pod. Start from
/// `Kubernetes.defaults "image"`.
type KubernetesOptions =
    { /// The container image (required); it must have bash and the worker pool.
      Image: string
      /// Default `default`.
      Namespace: string
      /// Default 1.
      NodesPerBlock: int
      /// Default 4, as Parsl.
      InitBlocks: int
      /// Default 0.
      MinBlocks: int
      /// Default 10.
      MaxBlocks: int
      /// Default 1.
      Parallelism: float
      /// CPU limit. Default 2.
      MaxCpu: float
      /// Memory limit. Default `500Mi`.
      MaxMem: string
      /// CPU request. Default 1.
      InitCpu: float
      /// Memory request. Default `250Mi`.
      InitMem: string
      /// More resource requests (as `nvidia.com/gpu`).
      ExtraRequests: Map<string, string>
      /// More resource limits.
      ExtraLimits: Map<string, string>
      /// Shell lines run in the container before the command.
      WorkerInit: string
      /// The pod name's stem; default the block's job name. A short random id is appended.
      PodName: string option
      /// `runAsUser` (with `GroupId`).
      UserId: int option
      /// `runAsGroup` (with `UserId`).
      GroupId: int option
      /// `runAsNonRoot`. Default false.
      RunAsNonRoot: bool
      /// An image pull secret.
      Secret: string option
      /// Persistent volume claims and where to mount them.
      PersistentVolumes: (string * string) list
      /// The pod's service account.
      ServiceAccountName: string option
      /// Pod annotations.
      Annotations: Map<string, string>
      /// The API server (as `https://10.0.0.1:6443`); None reads the kubeconfig or the in-cluster configuration.
      ApiServer: string option
      /// A bearer token for `ApiServer`.
      AccessToken: string option
      /// The launcher, as for other providers. Default the simple one: a pod is one node.
      Launcher: ILauncher }

/// Kubernetes pod manifests and states: pure functions.
[<RequireQualifiedAccess>]
module Kubernetes =
    /// Parsl's defaults with an image.
    let defaults image =
        { Image = image
          Namespace = "default"
          NodesPerBlock = 1
          InitBlocks = 4
          MinBlocks = 0
          MaxBlocks = 10
          Parallelism = 1.0
          MaxCpu = 2.0
          MaxMem = "500Mi"
          InitCpu = 1.0
          InitMem = "250Mi"
          ExtraRequests = Map.empty
          ExtraLimits = Map.empty
          WorkerInit = ""
          PodName = None
          UserId = None
          GroupId = None
          RunAsNonRoot = false
          Secret = None
          PersistentVolumes = []
          ServiceAccountName = None
          Annotations = Map.empty
          ApiServer = None
          AccessToken = None
          Launcher = BasicLaunchers.simple }

    /// A pod phase as a job state (Parsl's table).
    let state (phase: string) =
        match phase with
        | "Running" -> JobState.Running
        | "Pending" -> JobState.Pending
        | "Succeeded" -> JobState.Completed
        | "Failed" -> JobState.Failed
        | _ -> JobState.Unknown

    /// A DNS subdomain name (RFC 1123) from any text: lower case, `[a-z0-9.-]`, starting and ending alphanumeric.
    let sanitize (name: string) =
        let s = Regex.Replace((if isNull name then "" else name).ToLowerInvariant(), @"[^a-z0-9.-]", "-")
        // Each dot-separated label must start and end with a letter or digit.
        let labels =
            s.Split('.')
            |> Array.map (fun l -> Regex.Replace(l, @"^[^a-z0-9]+|[^a-z0-9]+$", ""))
            |> Array.filter (fun l -> l <> "")
        if labels.Length = 0 then "parsl-kube" else String.Join(".", labels)

    /// The pod's name: the stem, trimmed to leave room for `.<jobId>`, then the id (at most 253 characters).
    let podName (stem: string) (jobId: string) =
        let s = sanitize stem
        let room = 253 - 1 - jobId.Length
        let s = (if s.Length > room then s.Substring(0, room) else s).TrimEnd('.', '-')
        sprintf "%s.%s" (if s = "" then "parsl-kube" else sanitize s) jobId

    let private quantities (m: (string * string) list) =
        let d = Dictionary<string, ResourceQuantity>()
        for k, v in m do d[k] <- ResourceQuantity(v)
        d :> IDictionary<_, _>

    /// The command the container runs: worker_init, then the command.
    let containerScript (o: KubernetesOptions) (command: string) =
        (match BatchJobs.asLines o.WorkerInit with "" -> "" | s -> s + "\n") + command

    /// The pod for one block.
    let pod (o: KubernetesOptions) (name: string) (jobId: string) (command: string) =
        let container =
            V1Container(
                Name = jobId,
                Image = o.Image,
                Command = ResizeArray [ "/bin/bash" ],
                Args = ResizeArray [ "-c"; containerScript o command ],
                Resources =
                    V1ResourceRequirements(
                        Limits = quantities ([ "cpu", string o.MaxCpu; "memory", o.MaxMem ] @ Map.toList o.ExtraLimits),
                        Requests = quantities ([ "cpu", string o.InitCpu; "memory", o.InitMem ] @ Map.toList o.ExtraRequests)),
                VolumeMounts = ResizeArray(o.PersistentVolumes |> List.map (fun (claim, path) -> V1VolumeMount(MountPath = path, Name = claim))),
                SecurityContext =
                    (match o.UserId, o.GroupId with
                     | Some u, Some g -> V1SecurityContext(RunAsUser = Nullable(int64 u), RunAsGroup = Nullable(int64 g), RunAsNonRoot = Nullable o.RunAsNonRoot)
                     | _ -> null))
        let spec =
            V1PodSpec(
                Containers = ResizeArray [ container ],
                RestartPolicy = "Never",
                Volumes = ResizeArray(o.PersistentVolumes |> List.map (fun (claim, _) ->
                    V1Volume(Name = claim, PersistentVolumeClaim = V1PersistentVolumeClaimVolumeSource(ClaimName = claim)))),
                ServiceAccountName = Option.toObj o.ServiceAccountName,
                ImagePullSecrets = (match o.Secret with Some s -> ResizeArray [ V1LocalObjectReference(Name = s) ] | None -> null))
        let meta =
            V1ObjectMeta(
                Name = name,
                Labels = (dict [ "parsl-job-id", jobId ] |> Dictionary),
                Annotations = (if o.Annotations.IsEmpty then null else Dictionary(o.Annotations)))
        V1Pod(ApiVersion = "v1", Kind = "Pod", Metadata = meta, Spec = spec)

    /// Checks the options.
    let validate (o: KubernetesOptions) =
        let owner = "KubernetesProvider"
        BatchJobs.validateBlocks owner o.InitBlocks o.MinBlocks o.MaxBlocks o.NodesPerBlock o.Parallelism
        @ [ if String.IsNullOrWhiteSpace o.Image then ConfigurationError(owner + ".Image", "is required: the container image with bash and the worker pool")
            if not (Regex.IsMatch((if isNull o.Namespace then "" else o.Namespace), @"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")) then
                ConfigurationError(owner + ".Namespace", sprintf "'%s' is not a namespace name (lower-case letters, digits, -)" o.Namespace)
            if not (o.MaxCpu > 0.0) then ConfigurationError(owner + ".MaxCpu", sprintf "is %g; use a positive CPU count" o.MaxCpu)
            if not (o.InitCpu > 0.0) then ConfigurationError(owner + ".InitCpu", sprintf "is %g; use a positive CPU count" o.InitCpu)
            if o.InitCpu > o.MaxCpu then ConfigurationError(owner + ".InitCpu", sprintf "request %g exceeds the limit MaxCpu %g" o.InitCpu o.MaxCpu)
            for field, q in [ "MaxMem", o.MaxMem; "InitMem", o.InitMem ] do
                if not (Regex.IsMatch((if isNull q then "" else q), @"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")) then
                    ConfigurationError(owner + "." + field, sprintf "'%s' is not a memory quantity, as 500Mi or 2Gi" q)
            if o.UserId.IsSome <> o.GroupId.IsSome then
                ConfigurationError(owner + ".GroupId", "UserId and GroupId are used together; set both or neither")
            match o.ApiServer with
            | Some a when not (Uri.IsWellFormedUriString(a, UriKind.Absolute)) ->
                ConfigurationError(owner + ".ApiServer", sprintf "'%s' is not a URL, as https://10.0.0.1:6443" a)
            | _ -> () ]
