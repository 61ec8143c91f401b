namespace Parsl.Node

open System
open System.Threading
open System.Threading.Tasks

/// The delegates an F# function app ships to workers. `Func<_, _>(f)` compiles to a small class in the assembly that
/// writes it, and a worker rebuilds that class to run the app: made here, it is one a worker loads without the
/// kernel (made in Parsl.Core.FSharp, every F# function app made its worker load the kernel).
[<RequireQualifiedAccess>]
module internal AppDelegates =
    /// A function of one argument.
    let func1 (f: 'A -> 'R) = Func<'A, 'R>(f)

    /// A curried function of two arguments.
    let func2 (f: 'A -> 'B -> 'R) = Func<'A, 'B, 'R>(fun a b -> f a b)

    /// A curried function of three arguments.
    let func3 (f: 'A -> 'B -> 'C -> 'R) = Func<'A, 'B, 'C, 'R>(fun a b c -> f a b c)

    /// An asynchronous function taking the try's cancellation token.
    let async1 (f: 'A -> CancellationToken -> Task<'R>) = Func<'A, CancellationToken, Task<'R>>(fun a ct -> f a ct)
