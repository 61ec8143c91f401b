namespace Parsl.Runtime

/// Finds futures inside collections and tuples, and rebuilds them with results (Parsl's DEEP_DEPENDENCY_RESOLVER).
[<RequireQualifiedAccess>]
module DeepResolver =
    /// Every future (`AppFuture` or `Task`) inside the value, at any depth. Placeholder: none.
    let gather (value: obj) : obj list = []

    /// The value with every future replaced by its result. Placeholder: unchanged.
    let unwrap (value: obj) : obj = value
