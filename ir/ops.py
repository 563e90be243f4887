"""The lowbit op set: one enum, families as sets (tinygrad ``Ops`` / ``GroupOp`` style).

IR ops are shape-static: everything ONNX passes as a "parameter tensor" (Reshape's shape, Slice's
starts/ends, Squeeze's axes, Pad's pads, Resize's scales/sizes, Clip's bounds ...) is resolved by
the importer into the op's frozen attribute dataclass (``lowbit.ir.attrs``). Node inputs are data
tensors only. ONNX ``Shape``, ``Constant`` and ``ConstantOfShape`` never reach the IR: with every
input shape bound, the importer turns them into constants.
"""

from __future__ import annotations

from enum import Enum


class Op(str, Enum):
    # linear algebra
    CONV = "Conv"
    CONV_TRANSPOSE = "ConvTranspose"
    MATMUL = "MatMul"
    GEMM = "Gemm"
    MATMUL_INTEGER = "MatMulInteger"
    # normalization / softmax
    BATCHNORM = "BatchNormalization"
    LAYERNORM = "LayerNormalization"
    LRN = "LRN"
    SOFTMAX = "Softmax"
    LOG_SOFTMAX = "LogSoftmax"
    # unary elementwise
    RELU = "Relu"
    SIGMOID = "Sigmoid"
    TANH = "Tanh"
    ERF = "Erf"
    GELU = "Gelu"
    EXP = "Exp"
    LOG = "Log"
    SQRT = "Sqrt"
    NEG = "Neg"
    ABS = "Abs"
    RECIPROCAL = "Reciprocal"
    LEAKY_RELU = "LeakyRelu"
    HARD_SIGMOID = "HardSigmoid"
    HARD_SWISH = "HardSwish"
    CLIP = "Clip"
    CAST = "Cast"
    IDENTITY = "Identity"
    # binary / ternary elementwise (numpy broadcasting)
    ADD = "Add"
    SUB = "Sub"
    MUL = "Mul"
    DIV = "Div"
    POW = "Pow"
    PRELU = "PRelu"
    EQUAL = "Equal"
    WHERE = "Where"
    # reductions and pooling
    REDUCE_MEAN = "ReduceMean"
    REDUCE_SUM = "ReduceSum"
    REDUCE_MAX = "ReduceMax"
    MAXPOOL = "MaxPool"
    AVGPOOL = "AveragePool"
    GLOBAL_AVGPOOL = "GlobalAveragePool"
    GLOBAL_MAXPOOL = "GlobalMaxPool"
    # data movement
    FLATTEN = "Flatten"
    RESHAPE = "Reshape"
    TRANSPOSE = "Transpose"
    CONCAT = "Concat"
    SPLIT = "Split"
    SLICE = "Slice"
    SQUEEZE = "Squeeze"
    UNSQUEEZE = "Unsqueeze"
    GATHER = "Gather"
    EXPAND = "Expand"
    PAD = "Pad"
    RESIZE = "Resize"
    # quantization
    QUANTIZE = "QuantizeLinear"
    DEQUANTIZE = "DequantizeLinear"
    FAKE_QUANT = "FakeQuant"
    # integer ops produced by fold_scales (attrs carry the requant: lowbit.ir.attrs.Requant)
    QCONV = "QConv"
    QMATMUL = "QMatMul"
    QADD = "QAdd"
    REQUANTIZE = "Requantize"

    def __str__(self) -> str:
        return self.value


class OpKind:
    """Families of ops, as frozensets, so passes say ``node.op in OpKind.ELEMENTWISE``."""

    UNARY = frozenset({
        Op.RELU, Op.SIGMOID, Op.TANH, Op.ERF, Op.GELU, Op.EXP, Op.LOG, Op.SQRT, Op.NEG, Op.ABS,
        Op.RECIPROCAL, Op.LEAKY_RELU, Op.HARD_SIGMOID, Op.HARD_SWISH, Op.CLIP, Op.CAST,
        Op.IDENTITY,
    })
    BINARY = frozenset({Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.POW, Op.PRELU, Op.EQUAL})
    ELEMENTWISE = UNARY | BINARY | {Op.WHERE}
    #: ops whose output shape is the numpy broadcast of the input shapes
    BROADCASTING = BINARY | {Op.WHERE}
    ACTIVATION = frozenset({
        Op.RELU, Op.SIGMOID, Op.TANH, Op.GELU, Op.LEAKY_RELU, Op.HARD_SIGMOID, Op.HARD_SWISH,
        Op.CLIP, Op.PRELU,
    })
    LINEAR = frozenset({Op.CONV, Op.CONV_TRANSPOSE, Op.MATMUL, Op.GEMM, Op.MATMUL_INTEGER})
    NORMALIZATION = frozenset({Op.BATCHNORM, Op.LAYERNORM, Op.LRN, Op.SOFTMAX, Op.LOG_SOFTMAX})
    REDUCE = frozenset({Op.REDUCE_MEAN, Op.REDUCE_SUM, Op.REDUCE_MAX})
    POOL = frozenset({Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.GLOBAL_MAXPOOL})
    MOVEMENT = frozenset({
        Op.FLATTEN, Op.RESHAPE, Op.TRANSPOSE, Op.CONCAT, Op.SPLIT, Op.SLICE, Op.SQUEEZE,
        Op.UNSQUEEZE, Op.GATHER, Op.EXPAND, Op.PAD, Op.IDENTITY,
    })
    #: pure views / relabelings of the same elements (no arithmetic, order may change)
    RESHAPING = frozenset({Op.FLATTEN, Op.RESHAPE, Op.SQUEEZE, Op.UNSQUEEZE, Op.IDENTITY})
    QUANTIZED = frozenset({Op.QUANTIZE, Op.DEQUANTIZE, Op.MATMUL_INTEGER, Op.FAKE_QUANT,
                           Op.QCONV, Op.QMATMUL, Op.QADD, Op.REQUANTIZE})
    #: ops that own weights worth counting as parameters / MACs
    WEIGHTED = frozenset({Op.CONV, Op.CONV_TRANSPOSE, Op.MATMUL, Op.GEMM, Op.MATMUL_INTEGER,
                          Op.QCONV, Op.QMATMUL})
