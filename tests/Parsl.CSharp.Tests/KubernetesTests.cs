using System.Collections.Concurrent;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.FSharp.Collections;
using Parsl.Providers;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>A FAKE Kubernetes API server (no real one installs here): an HttpListener on 127.0.0.1 that answers the
/// pod create and delete calls the provider makes, keeping the pods it was sent and the requests' bearer tokens.</summary>
internal sealed class FakeKubernetesApi : IAsyncDisposable
{
    private readonly HttpListener listener = new();
    private readonly Task loop;

    public FakeKubernetesApi()
    {
        for (var attempt = 0; ; attempt++)
        {
            var port = Random.Shared.Next(40000, 50000);
            listener.Prefixes.Clear();
            listener.Prefixes.Add($"http://127.0.0.1:{port}/");
            try { listener.Start(); Url = $"http://127.0.0.1:{port}"; break; }
            catch (HttpListenerException) when (attempt < 20) { }
        }
        loop = Task.Run(async () =>
        {
            while (listener.IsListening)
            {
                HttpListenerContext ctx;
                try { ctx = await listener.GetContextAsync(); }
                catch (Exception) when (!listener.IsListening) { return; }
                Tokens.Enqueue(ctx.Request.Headers["Authorization"] ?? "");
                var parts = ctx.Request.Url!.AbsolutePath.Split('/', StringSplitOptions.RemoveEmptyEntries); // api v1 namespaces NS pods [NAME]
                string body;
                if (ctx.Request.HttpMethod == "POST" && parts.Length == 5)
                {
                    using var reader = new StreamReader(ctx.Request.InputStream);
                    var pod = JsonNode.Parse(await reader.ReadToEndAsync())!;
                    pod["metadata"]!["namespace"] = parts[3];
                    pod["status"] = new JsonObject { ["phase"] = "Pending" };
                    Pods[parts[3] + "/" + (string)pod["metadata"]!["name"]!] = pod;
                    ctx.Response.StatusCode = 201;
                    body = pod.ToJsonString();
                }
                else if (ctx.Request.HttpMethod == "DELETE" && parts.Length == 6 && Pods.TryRemove(parts[3] + "/" + parts[5], out var gone))
                    body = gone.ToJsonString();
                else
                {
                    ctx.Response.StatusCode = 404;
                    body = """{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}""";
                }
                var bytes = Encoding.UTF8.GetBytes(body);
                ctx.Response.ContentType = "application/json";
                await ctx.Response.OutputStream.WriteAsync(bytes);
                ctx.Response.Close();
            }
        });
    }

    public string Url { get; } = "";

    public ConcurrentDictionary<string, JsonNode> Pods { get; } = new();

    public ConcurrentQueue<string> Tokens { get; } = new();

    public async ValueTask DisposeAsync()
    {
        listener.Stop();
        listener.Close();
        await loop;
    }
}

/// <summary>KubernetesProviderOptions from C#, against the fake API server: pods are made from the C# options, sent
/// with the access token, and deleted on cancel.</summary>
public class KubernetesTests
{
    [Fact]
    public async Task A_block_is_a_pod_made_from_the_CSharp_options_and_cancel_deletes_it()
    {
        await using var api = new FakeKubernetesApi();
        var options = new KubernetesProviderOptions
        {
            Image = "ghcr.io/example/parsl-worker:1", Namespace = "science", ApiServer = api.Url, AccessToken = "tok-123",
            WorkerInit = "source /opt/env.sh", MaxCpu = 4, MaxMem = "2Gi", ServiceAccountName = "parsl", Secret = "regcred",
        };
        options.ExtraLimits["nvidia.com/gpu"] = "1";
        options.PersistentVolumes["data-claim"] = "/data";
        var provider = (IExecutionProvider)options.Build();
        try
        {
            provider.Initialize(new ProviderContext(Path.Combine(TempRunDir(), "submit_scripts"), Serilog.Core.Logger.None));
            var id = await provider.SubmitAsync("worker_pool --block 0", 1, "parsl.htex.block-0", CancellationToken.None).WaitAsync(Limit);
            var (key, pod) = Assert.Single(api.Pods);
            Assert.Equal($"science/parsl.htex.block-0.{id}", key);
            var container = pod["spec"]!["containers"]![0]!;
            Assert.Equal("ghcr.io/example/parsl-worker:1", (string)container["image"]!);
            Assert.Equal("4", (string)container["resources"]!["limits"]!["cpu"]!);
            Assert.Equal("1", (string)container["resources"]!["limits"]!["nvidia.com/gpu"]!);
            Assert.Equal("source /opt/env.sh\n\nworker_pool --block 0", (string)container["args"]![1]!);
            Assert.Equal("/data", (string)container["volumeMounts"]![0]!["mountPath"]!);
            Assert.Equal("parsl", (string)pod["spec"]!["serviceAccountName"]!);
            Assert.Equal("regcred", (string)pod["spec"]!["imagePullSecrets"]![0]!["name"]!);
            Assert.All(api.Tokens, t => Assert.Equal("Bearer tok-123", t));

            var cancelled = await provider.CancelAsync(ListModule.OfSeq([id]), CancellationToken.None).WaitAsync(Limit);
            Assert.True(Assert.Single(cancelled));
            Assert.Empty(api.Pods);
        }
        finally
        {
            ((IDisposable)provider).Dispose();
        }
    }
}
