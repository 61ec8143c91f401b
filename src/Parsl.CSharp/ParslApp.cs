using Parsl.Core;

namespace Parsl;

/// <summary>What every app has, whatever its arity: its name. Apps are made by <see cref="Dfk"/>.</summary>
public abstract class ParslApp
{
    private protected ParslApp(string name) => Name = name;

    /// <summary>The app's name, as in task records and logs: the options' <c>Name</c>, else the method's name,
    /// else <c>app</c> for a lambda.</summary>
    public string Name { get; }

    /// <inheritdoc/>
    public override string ToString() => $"<App {Name}>";

    private protected static ArgSlot Slot<T>(Arg<T>? arg) =>
        // A null Arg is what C# makes of a null literal for a reference-typed parameter: a null value.
        arg is null ? ArgSlot.NewPlain(null) : arg.Slot;

    private protected static AppOptions Overrides(FunctionAppOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var shell = options as ShellAppOptions;
        return AppHandles.Options(options.Name, options.Executors.ToArray(), new Dictionary<string, object>(options.Resources),
            shell?.Stdout?.Spec, shell?.Stderr?.Spec, options.Walltime, shell?.Outputs.ToArray(), options.Cache, options.IgnoreForCache.ToArray());
    }

    private protected static AppFuture<TResult> Submit<TResult>(AppHandle<TResult> handle, ArgSlot[] slots, CancellationToken cancellationToken)
    {
        var future = handle.Call(slots);
        if (cancellationToken.CanBeCanceled)
        {
            var registration = cancellationToken.Register(static f => ((AppFuture)f!).Cancel(), future);
            // The registration lives as long as the task: released when the future completes, whatever the outcome.
            future.Task.ContinueWith(
                static (_, r) => ((CancellationTokenRegistration)r!).Dispose(), registration,
                CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
        return future;
    }
}
