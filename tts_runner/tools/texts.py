"""Texts the tools and the tests share."""

# Eight English texts of different lengths, numbers and a question among them: the greedy agreement
# of an engine with stock is measured over these (tools/bench --agreement, the GPU tests).
AGREEMENT_TEXTS = [
    "Welcome back to the show, where we talk about the small machines that run our lives.",
    "Today we have a guest who has spent twenty years building radios by hand.",
    "Short one.",
    "It started with a broken transistor set that my grandfather kept in the kitchen.",
    "What did you learn from taking it apart, piece by piece, on that kitchen table?",
    "Patience, mostly, and that every circuit tells you how it wants to be fixed.",
    "Numbers like 3.14 and dates like 1987 are read too.",
    "Thanks for listening, and see you next week.",
]
