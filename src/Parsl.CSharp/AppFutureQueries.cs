using Parsl.Core;

namespace Parsl;

/// <summary>Lifted results (Parsl's <c>fut["a"]</c> and <c>fut.attr</c>): a projection of a future's result is itself
/// an <see cref="AppFuture{T}"/>, a task of the kernel that depends on the source, so it can be awaited or passed to
/// another app as a dependency. Also the LINQ query syntax (<c>from x in future select x.Name</c>).</summary>
public static class AppFutureQueries
{
    private static DataFlowKernel KernelOf(AppFuture future) =>
        future.Owner as DataFlowKernel
        ?? throw new ArgumentException("The future does not belong to a DataFlowKernel", nameof(future));

    /// <summary>A future of <paramref name="selector"/> applied to the result. It fails with
    /// <see cref="DependencyError"/> when <paramref name="source"/> fails, and with the selector's exception when that throws.</summary>
    /// <typeparam name="T">The source's result type.</typeparam>
    /// <typeparam name="TResult">The projection's type.</typeparam>
    /// <param name="source">The future.</param>
    /// <param name="selector">The projection; runs on the kernel's internal threads, in this process.</param>
    /// <returns>The projection's future.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="NoDataFlowKernelError">The kernel was disposed.</exception>
    public static AppFuture<TResult> Select<T, TResult>(this AppFuture<T> source, Func<T, TResult> selector)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(selector);
        Func<T, Task<TResult>> body = x => Task.FromResult(selector(x));
        var handle = AppHandles.Join<TResult>(KernelOf(source), Named("select"), body, args => body((T)args[0]!));
        return handle.Call([ArgModule.future(source).Slot]);
    }

    /// <summary>LINQ's <c>from a in first from b in second(a) select result(a, b)</c>: waits for both futures (without
    /// holding a thread), then projects. Fails with <see cref="DependencyError"/> when <paramref name="source"/> fails,
    /// and with <see cref="JoinError"/> when the second future fails.</summary>
    /// <typeparam name="T">The first future's result type.</typeparam>
    /// <typeparam name="TOther">The second future's result type.</typeparam>
    /// <typeparam name="TResult">The projection's type.</typeparam>
    /// <param name="source">The first future.</param>
    /// <param name="other">The second future, from the first's result.</param>
    /// <param name="resultSelector">The projection.</param>
    /// <returns>The projection's future.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    public static AppFuture<TResult> SelectMany<T, TOther, TResult>(this AppFuture<T> source, Func<T, AppFuture<TOther>> other,
        Func<T, TOther, TResult> resultSelector)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(other);
        ArgumentNullException.ThrowIfNull(resultSelector);
        Func<T, Task<TResult>> body = async x =>
        {
            var second = other(x) ?? throw new InvalidOperationException("The second future of SelectMany is null");
            return resultSelector(x, await second.Task.ConfigureAwait(false));
        };
        var handle = AppHandles.Join<TResult>(KernelOf(source), Named("select"), body, args => body((T)args[0]!));
        return handle.Call([ArgModule.future(source).Slot]);
    }

    private static AppOptions Named(string name) =>
        AppHandles.Options(name, [], new Dictionary<string, object>(), null, null, null, null, false, []);
}
