module Parsl.Tests.ProvidersKubernetesTests

open System
open System.Text.RegularExpressions
open System.Threading
open Expecto
open FsCheck
open Parsl.Providers
open Parsl.Tests.FakeKubernetesApi

let rfc1123 = Regex(@"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

let provider (api: FakeKubernetesApi) (f: KubernetesOptions -> KubernetesOptions) =
    let p = new KubernetesProvider(f { Kubernetes.defaults "ghcr.io/example/parsl-worker:1" with ApiServer = Some api.Url; Namespace = "science" })
    (p :> IExecutionProvider).Initialize(ProvidersSlurmTests.context ())
    p

let tests =
    testSequenced <| testList "Providers.Kubernetes" [
        test "Submit creates one pod per block: image, namespace, resources, label, worker_init, volumes" {
            use api = new FakeKubernetesApi()
            use p =
                provider api (fun o ->
                    { o with
                        WorkerInit = "source /opt/env.sh"; MaxCpu = 4.0; MaxMem = "2Gi"; InitMem = "1Gi"
                        ExtraLimits = Map [ "nvidia.com/gpu", "1" ]; PersistentVolumes = [ "data-claim", "/data" ]
                        ServiceAccountName = Some "parsl"; Annotations = Map [ "team", "hpc" ]; Secret = Some "regcred" })
            let ip = p :> IExecutionProvider
            let id = ip.SubmitAsync("worker_pool --block 0", 1, "parsl.htex.block-0", CancellationToken.None) |> TestUtil.await
            Expect.equal id.Length 8 "short job id"
            let key, pod = api.Pods |> Seq.exactlyOne |> fun kv -> kv.Key, kv.Value
            Expect.equal key (sprintf "science/parsl.htex.block-0.%s" id) "namespace and pod name = job name + id"
            let c path =
                try at pod ("spec/containers/0/" + path)
                with e -> failtestf "no %s in %s" path (pod.ToJsonString())
            Expect.equal (c "image") "ghcr.io/example/parsl-worker:1" "image"
            Expect.equal (c "name") id "container named after the job id"
            Expect.equal (at pod "metadata/labels/parsl-job-id") id "label"
            Expect.equal (c "resources/limits/cpu") "4" "cpu limit"
            Expect.equal (c "resources/limits/memory") "2Gi" "memory limit"
            let limits = pod.["spec"].["containers"].[0].["resources"].["limits"].AsObject()
            let gpu = limits.["nvidia.com/gpu"].GetValue<string>()
            Expect.equal gpu "1" "extra limit"
            Expect.equal (c "resources/requests/memory") "1Gi" "memory request"
            let script = c "args/1"
            Expect.equal script "source /opt/env.sh\n\nworker_pool --block 0" "worker_init then the command"
            Expect.equal (c "volumeMounts/0/mountPath") "/data" "mount"
            Expect.equal (at pod "spec/volumes/0/persistentVolumeClaim/claimName") "data-claim" "claim"
            Expect.equal (at pod "spec/serviceAccountName") "parsl" "service account"
            Expect.equal (at pod "spec/imagePullSecrets/0/name") "regcred" "pull secret"
            Expect.equal (at pod "metadata/annotations/team") "hpc" "annotation"
        }
        test "Status follows the pod phase; a failed pod reports its exit code; cancel deletes the pod" {
            use api = new FakeKubernetesApi()
            use p = provider api id
            let ip = p :> IExecutionProvider
            let a = ip.SubmitAsync("w", 1, "parsl.htex.block-0", CancellationToken.None) |> TestUtil.await
            let b = ip.SubmitAsync("w", 1, "parsl.htex.block-1", CancellationToken.None) |> TestUtil.await
            let name (id: string) = api.Pods.Keys |> Seq.find (fun (k: string) -> k.EndsWith id) |> fun k -> k.Split('/').[1]
            let states () = ip.StatusAsync([ a; b ], CancellationToken.None) |> TestUtil.await
            Expect.equal (states () |> List.map (fun s -> s.State)) [ JobState.Pending; JobState.Pending ] "pending"
            api.SetPhase("science", name a, "Running")
            api.SetPhase("science", name b, "Failed", 137, "OOMKilled")
            let s = states ()
            Expect.equal s[0].State JobState.Running "running"
            Expect.equal (s[1].State, s[1].ExitCode) (JobState.Failed, Some 137) "failed 137"
            Expect.stringContains (defaultArg s[1].Message "") "OOMKilled" "reason in the message"
            Expect.equal (ip.CancelAsync([ a ], CancellationToken.None) |> TestUtil.await) [ true ] "deleted"
            Expect.isFalse (api.Pods.ContainsKey(sprintf "science/%s" (sprintf "parsl.htex.block-0.%s" a))) "pod gone"
            Expect.equal (states ()).[0].State JobState.Cancelled "CANCELLED"
            Expect.contains api.Requests (sprintf "DELETE /api/v1/namespaces/science/pods/parsl.htex.block-0.%s" a) "DELETE sent"
        }
        test "A refused pod raises SubmitException with the API server's answer; no server fails instead of hanging" {
            use api = new FakeKubernetesApi()
            use p = provider api id
            let ip = p :> IExecutionProvider
            api.RefuseCreates <- true
            let e =
                try ip.SubmitAsync("w", 1, "j", CancellationToken.None) |> TestUtil.await |> ignore; None
                with e -> Some(ProvidersSshTests.unwrap e)
            match e with
            | Some(:? SubmitException as s) ->
                Expect.equal s.ExitCode (System.Nullable 403) "HTTP status"
                Expect.stringContains s.Stderr "exceeded quota" "the server's message"
            | other -> failtestf "expected SubmitException, got %A" other
            (api :> IDisposable).Dispose()
            Expect.throws (fun () -> ip.SubmitAsync("w", 1, "j", CancellationToken.None) |> TestUtil.await |> ignore) "server gone"
        }
        test "Validate names fields" {
            let errs = Kubernetes.validate { Kubernetes.defaults "" with Namespace = "Bad_NS"; MaxMem = "lots"; InitCpu = 3.0; UserId = Some 1000 }
            Expect.equal (errs |> List.map (fun e -> e.Field) |> List.sort)
                ([ "KubernetesProvider.Image"; "KubernetesProvider.Namespace"; "KubernetesProvider.MaxMem"; "KubernetesProvider.InitCpu"; "KubernetesProvider.GroupId" ] |> List.sort) "fields"
        }
        testProperty "Pod names are valid DNS subdomains ending in the job id, whatever the job name" (fun (stem: string) ->
            let n = Kubernetes.podName stem "ab12cd34"
            rfc1123.IsMatch n && n.Length <= 253 && n.EndsWith ".ab12cd34")
    ]
