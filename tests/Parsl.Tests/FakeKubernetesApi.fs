/// A fake Kubernetes API server for the provider's tests, because no real API server installs on Debian. It is an
/// HttpListener on 127.0.0.1 that speaks the three pod calls the provider makes (create, read, delete) in the
/// API's JSON, keeps pods in memory, and lets a test play the kubelet by setting a pod's phase.
module Parsl.Tests.FakeKubernetesApi

open System
open System.Collections.Concurrent
open System.IO
open System.Net
open System.Net.Sockets
open System.Text
open System.Text.Json.Nodes
open System.Text.RegularExpressions
open System.Threading
open System.Threading.Tasks

let private freePort () =
    let l = new TcpListener(IPAddress.Loopback, 0)
    l.Start()
    let p = (l.LocalEndpoint :?> IPEndPoint).Port
    l.Stop()
    p

/// The string at a `/`-separated path (`spec/containers/0/image`) of a JSON document.
let at (n: JsonNode) (path: string) =
    let step (node: JsonNode) (key: string) =
        match System.Int32.TryParse key with
        | true, i -> node.AsArray().[i]
        | _ -> node.AsObject().[key]
    let v = path.Split('/') |> Array.fold step n
    if isNull v then null else v.GetValue<string>()

let private route = Regex(@"^/api/v1/namespaces/([^/]+)/pods(?:/([^/?]+))?$")

type FakeKubernetesApi() =
    let port = freePort ()
    let listener = new HttpListener()
    do listener.Prefixes.Add(sprintf "http://127.0.0.1:%d/" port)
    do listener.Start()
    let pods = ConcurrentDictionary<string, JsonNode>()
    let requests = ConcurrentQueue<string>()
    let stop = new CancellationTokenSource()
    let mutable refuse = false

    let reply (ctx: HttpListenerContext) (code: int) (body: string) =
        let bytes = Encoding.UTF8.GetBytes body
        ctx.Response.StatusCode <- code
        ctx.Response.ContentType <- "application/json"
        ctx.Response.ContentLength64 <- int64 bytes.Length
        ctx.Response.OutputStream.Write(bytes, 0, bytes.Length)
        ctx.Response.Close()

    let status code reason message =
        sprintf """{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"%s","reason":"%s","code":%d}""" message reason code

    let handle (ctx: HttpListenerContext) =
        let path = ctx.Request.Url.AbsolutePath
        requests.Enqueue(sprintf "%s %s" ctx.Request.HttpMethod path)
        let m = route.Match path
        if not m.Success then reply ctx 404 (status 404 "NotFound" "no such route")
        else
            let ns = m.Groups[1].Value
            let name = m.Groups[2].Value
            match ctx.Request.HttpMethod, name with
            | "POST", "" when refuse ->
                reply ctx 403 (status 403 "Forbidden" (sprintf "pods is forbidden: exceeded quota in namespace %s" ns))
            | "POST", "" ->
                use r = new StreamReader(ctx.Request.InputStream)
                let pod = JsonNode.Parse(r.ReadToEnd())
                let podName = at pod "metadata/name"
                pod["metadata"]["namespace"] <- JsonValue.Create ns
                pod["status"] <- JsonObject(dict [ "phase", (JsonValue.Create "Pending" :> JsonNode) ])
                if pods.TryAdd(ns + "/" + podName, pod) then reply ctx 201 (pod.ToJsonString())
                else reply ctx 409 (status 409 "AlreadyExists" (sprintf "pods \\\"%s\\\" already exists" podName))
            | "GET", n when n <> "" ->
                match pods.TryGetValue(ns + "/" + n) with
                | true, pod -> reply ctx 200 (pod.ToJsonString())
                | _ -> reply ctx 404 (status 404 "NotFound" (sprintf "pods \\\"%s\\\" not found" n))
            | "DELETE", n when n <> "" ->
                match pods.TryRemove(ns + "/" + n) with
                | true, pod -> reply ctx 200 (pod.ToJsonString())
                | _ -> reply ctx 404 (status 404 "NotFound" (sprintf "pods \\\"%s\\\" not found" n))
            | _ -> reply ctx 405 (status 405 "MethodNotAllowed" "not supported by the fake")

    let loop =
        Task.Run(fun () ->
            task {
                while not stop.IsCancellationRequested do
                    try
                        let! ctx = listener.GetContextAsync()
                        try
                            handle ctx
                        with e ->
                            try reply ctx 500 (status 500 "InternalError" e.Message) with _ -> ()
                    with _ when stop.IsCancellationRequested -> ()
            } :> Task)

    /// The server's URL (`http://127.0.0.1:<port>`).
    member _.Url = sprintf "http://127.0.0.1:%d" port
    /// Every request seen, as `METHOD path`.
    member _.Requests = List.ofSeq requests
    /// The stored pods, `namespace/name` to JSON.
    member _.Pods = pods
    /// Plays the kubelet: sets the pod's phase and, for a finished container, its exit code and reason.
    member _.SetPhase(ns: string, name: string, phase: string, ?exitCode: int, ?reason: string) =
        let pod = pods[ns + "/" + name]
        let st = JsonObject()
        st["phase"] <- JsonValue.Create phase
        match exitCode with
        | Some code ->
            let terminated = JsonObject()
            terminated["exitCode"] <- JsonValue.Create code
            terminated["reason"] <- JsonValue.Create(defaultArg reason "Error")
            let cs = JsonObject()
            cs["name"] <- JsonValue.Create "c"
            cs["ready"] <- JsonValue.Create false
            cs["restartCount"] <- JsonValue.Create 0
            cs["image"] <- JsonValue.Create "img"
            cs["imageID"] <- JsonValue.Create ""
            cs["state"] <- JsonObject(dict [ "terminated", (terminated :> JsonNode) ])
            st["containerStatuses"] <- JsonArray(cs)
        | None -> ()
        pod["status"] <- st

    /// When true, pod creation is refused with 403 (as a namespace over its quota).
    member _.RefuseCreates
        with get () = refuse
        and set v = refuse <- v

    /// The pod stored under `namespace/name`, as JSON text.
    member _.PodJson(key: string) = pods[key].ToJsonString()

    interface IDisposable with
        member _.Dispose() =
          if not stop.IsCancellationRequested then
            stop.Cancel()
            listener.Stop()
            (try loop.Wait(TimeSpan.FromSeconds 10.0) |> ignore with _ -> ())
            listener.Close()
