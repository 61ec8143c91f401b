// Parsl.NET quickstart: estimate pi by Monte Carlo, fanned out over many tasks and reduced, then hand the
// estimate to a shell app. Run it with `dotnet fsi build.fsx -t Example`.
using System.Diagnostics;
using Parsl;

const int tasks = 64;
const int samplesPerTask = 200_000;

var clock = Stopwatch.StartNew();
await using var dfk = await Dfk.LoadAsync(new DfkOptions
{
    Executors = { new ThreadPoolExecutorOptions { MaxThreads = Environment.ProcessorCount } },
});

// A function app: how many of n random points in the unit square fall inside the quarter circle.
var sample = dfk.App((int seed, int n) =>
{
    var random = new Random(seed);
    var inside = 0;
    for (var i = 0; i < n; i++)
    {
        double x = random.NextDouble(), y = random.NextDouble();
        if (x * x + y * y <= 1.0) inside++;
    }
    return inside;
}, new FunctionAppOptions { Name = "sample" });

// A reduction that depends on every sample: it runs once they are all done.
var estimate = dfk.App((int[] inside) => 4.0 * inside.Sum() / ((double)inside.Length * samplesPerTask),
    new FunctionAppOptions { Name = "estimate" });

// A shell app: the command line is built from the estimate once it is known.
var report = Path.Combine(dfk.RunDir, "pi.txt");
var write = dfk.ShellApp((double pi, string path) => $"printf 'pi is about %.5f\\n' {pi.ToString(System.Globalization.CultureInfo.InvariantCulture)} > '{path}'",
    new ShellAppOptions { Name = "write_report", Outputs = { report } });

var samples = Enumerable.Range(0, tasks).Select(seed => sample.Invoke(seed, samplesPerTask)).ToList();
AppFuture<double> pi = estimate.Invoke(Arg.All(samples));
var written = write.Invoke(pi, report);

Console.WriteLine($"pi ≈ {await pi:F5} from {tasks * samplesPerTask:N0} samples in {tasks} tasks (task {pi.TaskId}: {pi.Status})");
await written;
Console.WriteLine($"shell app wrote {report}: {File.ReadAllText(report).Trim()}");
Console.WriteLine($"done in {clock.Elapsed.TotalSeconds:F2} s on {Environment.ProcessorCount} threads");
